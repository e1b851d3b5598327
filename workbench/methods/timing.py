"""The per-step time breakdown every method family logs as ``train/time_<phase>``."""

from __future__ import annotations

import contextlib
import time


class StepTimes:
    """Mixin: ``with self._timed("update"): ...`` adds the block's wall time to ``self._times["update"]``; the
    module logs and clears ``self._times`` once per step."""

    _times: dict[str, float]

    @contextlib.contextmanager
    def _timed(self, name: str):
        start = time.perf_counter()
        yield
        self._times[name] = self._times.get(name, 0.0) + time.perf_counter() - start
