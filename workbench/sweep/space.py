"""A search space in Hydra's override grammar, as Optuna distributions.

    method.lr: tag(log, interval(1e-5, 1e-3))   -> FloatDistribution(1e-5, 1e-3, log=True)
    method.group_size: choice(2, 4, 8)          -> CategoricalDistribution((2, 4, 8))
    method.clip_eps_high: range(0.2, 0.35, 0.05) -> FloatDistribution(0.2, 0.3, step=0.05)   (stop excluded)
    method.epochs: tag(int, interval(1, 4))     -> IntDistribution(1, 4)
    method=dpo,ipo  (on the command line)       -> CategoricalDistribution(("dpo", "ipo"))

Anything that is not a sweep (``seed=3``, ``task=gsm8k``) is passed unchanged to every trial.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from workbench.errors import ConfigError

_PLAIN = re.compile(r"^[A-Za-z0-9_./+-]+$")


def format_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back unchanged (strings quoted when they need it)."""
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in ("null", "true", "false") and not _is_number(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _range_distribution(field: str, sweep: RangeSweep) -> BaseDistribution:
    start, stop, step = sweep.start, sweep.stop, sweep.step
    if step is None or step == 0 or (stop - start) / step <= 0:
        raise ConfigError(field, f"range({start}, {stop}, {step}) is empty", "use range(start, stop, step) with stop beyond start")
    count = math.ceil((stop - start) / step - 1e-9)
    last = start + (count - 1) * step
    if all(isinstance(v, int) for v in (start, stop, step)):
        low, high = sorted((start, last))
        return IntDistribution(low, high, step=abs(step))
    low, high = sorted((float(start), float(last)))
    return FloatDistribution(low, round(high, 12), step=abs(float(step)))


def _interval_distribution(field: str, sweep: IntervalSweep) -> BaseDistribution:
    tags = set(sweep.tags or ())
    unknown = tags - {"log", "int"}
    if unknown:
        raise ConfigError(field, f"unknown tag(s) {sorted(unknown)} on interval", "tag an interval with log and/or int only")
    low, high = float(sweep.start), float(sweep.end)
    if not low < high:
        raise ConfigError(field, f"interval({low}, {high}) is empty", "give interval(low, high) with low < high")
    if "log" in tags and low <= 0:
        raise ConfigError(field, f"a log interval needs low > 0, got {low}", "use e.g. tag(log, interval(1e-5, 1e-2))")
    if "int" in tags:
        return IntDistribution(math.ceil(low), math.floor(high), log="log" in tags)
    return FloatDistribution(low, high, log="log" in tags)


def to_distribution(field: str, override: Override) -> BaseDistribution:
    value = override.value()
    if isinstance(value, ChoiceSweep):
        choices = tuple(value.list)
        if not choices:
            raise ConfigError(field, "choice() is empty", "give at least one value, e.g. choice(2, 4)")
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise ConfigError(field, f"choice value {c!r} is not a scalar", "choose among numbers, strings or booleans")
        return CategoricalDistribution(choices)
    if isinstance(value, RangeSweep):
        return _range_distribution(field, value)
    if isinstance(value, IntervalSweep):
        return _interval_distribution(field, value)
    raise ConfigError(field, f"'{override.input_line}' is not a sweep Optuna can sample",
                      "use choice(...), range(start, stop, step) or [tag(log|int,] interval(low, high)[)]")


def parse_search_space(params: Mapping[str, str] | None, arguments: Sequence[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """(distributions by override key, fixed overrides) from the sweeper's ``params`` and the command line.

    A key given on the command line wins over the same key in ``params`` (the command line is the last word)."""
    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    parser = OverridesParser.create()
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for line in lines:
        try:
            override = parser.parse_override(line)
        except Exception as e:  # noqa: BLE001 - Hydra's grammar errors are long; one line names the culprit
            raise ConfigError("hydra.sweeper.params", f"cannot parse '{line}' ({type(e).__name__})",
                              "write each entry as key: choice(...) | range(...) | interval(...)") from None
        key = override.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if override.is_sweep_override():
            space[key] = to_distribution(f"hydra.sweeper.params.{key}", override)
        else:
            fixed[key] = line
    if not space:
        raise ConfigError("hydra.sweeper.params", "the search space is empty",
                          "give at least one swept key, e.g. hydra.sweeper.params.method.lr='tag(log, interval(1e-5, 1e-3))'")
    return space, list(fixed.values())


def trial_overrides(params: Mapping[str, Any]) -> list[str]:
    return [f"{key}={format_value(value)}" for key, value in params.items()]
