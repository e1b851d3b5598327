"""MLflow tracking: one run per job, params = the resolved config, metrics logged exactly once per step.

Metrics are held back until the next checkpoint is on disk and travel inside that checkpoint, so a run
killed at any moment (SIGKILL included) and resumed from its last checkpoint logs every step once:
what was flushed is never logged again, what was pending is flushed from the checkpoint, and what came
after the checkpoint is recomputed.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections import defaultdict
from typing import Any, Mapping

from lightning.pytorch import Callback
from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from workbench import ROOT

log = logging.getLogger(__name__)

PENDING_KEY = "workbench_pending_metrics"
MAX_PARAM_CHARS = 6000  # MLflow >= 2 accepts parameter values up to this length


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"


def git_commit() -> tuple[str, bool]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
        return commit, dirty
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False


class RunLogger(MLFlowLogger):
    """MLFlowLogger that buffers metrics until a checkpoint is written and never logs a (key, step) twice."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending: list[tuple[str, float, int]] = []
        self.last_logged: dict[str, int] = {}

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(key=k, value=str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.experiment.log_batch(run_id=self.run_id, params=items[i : i + 100])

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        step = int(step or 0)
        for key, value in metrics.items():
            if key in self.last_logged and step <= self.last_logged[key]:
                continue  # logged before an interruption; the resumed run does not log it again
            self.pending.append((key, float(value), step))

    @rank_zero_only
    def flush(self) -> None:
        by_step: dict[int, dict[str, float]] = defaultdict(dict)
        for key, value, step in self.pending:
            if key in self.last_logged and step <= self.last_logged[key]:
                continue
            by_step[step][key] = value
        for step in sorted(by_step):
            super().log_metrics(by_step[step], step)
            for key in by_step[step]:
                self.last_logged[key] = max(step, self.last_logged.get(key, step))
        self.pending.clear()

    @rank_zero_only
    def load_logged_steps(self) -> None:
        """Read the last logged step of every metric of this (resumed) run."""
        client, run_id = self.experiment, self.run_id
        for key in client.get_run(run_id).data.metrics:
            history = client.get_metric_history(run_id, key)
            if history:
                self.last_logged[key] = max(m.step for m in history)

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        super().after_save_checkpoint(checkpoint_callback)
        self.flush()

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        # Lightning calls this after every fit/test; the terminal status is set once, by ``close``,
        # except on failure, where the run is marked FAILED at once.
        if not self._initialized:
            return
        self.flush()
        if status == "failed":
            self.experiment.set_terminated(self.run_id, "FAILED")

    @rank_zero_only
    def close(self, status: str = "FINISHED") -> None:
        self.flush()
        self.experiment.set_terminated(self.run_id, status)

    @rank_zero_only
    def set_running(self) -> None:
        self.experiment.update_run(self.run_id, status="RUNNING")

    @rank_zero_only
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.experiment.set_tag(self.run_id, key, str(value))

    @rank_zero_only
    def log_text(self, text: str, artifact_file: str) -> None:
        self.experiment.log_text(self.run_id, text, artifact_file)

    @rank_zero_only
    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.experiment.log_artifact(self.run_id, path, artifact_path)


class PendingMetricsInCheckpoint(Callback):
    """Store the not-yet-flushed metrics in each checkpoint; re-log them (once) when resuming from it."""

    def __init__(self, logger: RunLogger):
        self.logger = logger

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        checkpoint[PENDING_KEY] = list(self.logger.pending)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        for key, value, step in checkpoint.get(PENDING_KEY, []):
            self.logger.log_metrics({key: value}, step)
        self.logger.flush()
