"""One MLflow run per Optuna trial: the parent of the runs of its seeds, tagged with the study and the trial
number, holding the trial's params and objective; the best trial's run carries ``optuna.best=true``."""

from __future__ import annotations

from typing import Any, Mapping

import mlflow
import optuna
from mlflow.entities import Metric, Param, RunTag

from workbench.stores import ensure_experiment, open_store
from workbench.sweep.study import best_trial

RUN_ID_ATTR = "mlflow_run_id"


class TrialRuns:
    def __init__(self, tracking_uri: str, experiment_name: str, study: optuna.Study, metric: str):
        self.tracking_uri = tracking_uri
        self.experiment_id = ensure_experiment(tracking_uri, experiment_name)
        self.client = mlflow.MlflowClient(tracking_uri)
        self.study = study
        self.metric = metric

    def start(self, trial: optuna.Trial, sweep_dir: str, extra_tags: Mapping[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"{self.study.study_name}-trial{trial.number}", tags={
            "workbench.stage": "trial",
            "optuna.study": self.study.study_name,
            "optuna.trial": str(trial.number),
            "optuna.state": "RUNNING",
            "sweep": sweep_dir,
            **extra_tags,
        })
        params = [Param(k, str(v)) for k, v in trial.params.items()]
        if params:
            self.client.log_batch(run.info.run_id, params=params)
        trial.set_user_attr(RUN_ID_ATTR, run.info.run_id)
        return run.info.run_id

    def finish(self, run_id: str, state: optuna.trial.TrialState, value: float | None, per_seed: Mapping[str, Any],
               error: str | None = None) -> None:
        metrics = [Metric(f"seed/{k}", float(v), 0, 0) for k, v in per_seed.items() if v is not None]
        if value is not None:
            metrics += [Metric(self.metric, float(value), 0, 0), Metric("optuna/objective", float(value), 0, 0)]
        tags = [RunTag("optuna.state", state.name)]
        if error:
            tags.append(RunTag("optuna.error", error[:4000]))
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        self.client.set_terminated(run_id, "FAILED" if state == optuna.trial.TrialState.FAIL else "FINISHED")

    def interrupted(self, trial_numbers: list[int]) -> None:
        """The runs of trials whose sweeper died: KILLED, tagged INTERRUPTED (their params run again as new trials)."""
        for t in self.study.get_trials(deepcopy=False):
            run_id = t.user_attrs.get(RUN_ID_ATTR)
            if t.number in trial_numbers and run_id:
                self.client.set_tag(run_id, "optuna.state", "INTERRUPTED")
                self.client.set_terminated(run_id, "KILLED")

    def mark_best(self) -> None:
        """Leave ``optuna.best=true`` on the current best trial's run only.

        Sweeper processes sharing a study mark concurrently: this reconciles against what MLflow holds instead of
        remembering which run it marked last, under the store's lock (sqlite) and tried again on failure (MLflow's
        SQL store reads before it inserts a new tag, so two writers of one new tag collide on its unique key)."""
        best = best_trial(self.study)
        run_id = best.user_attrs.get(RUN_ID_ATTR) if best else None
        if run_id:
            open_store(self.tracking_uri, lambda: self._move_best_tag(run_id), wait_s=0.05)

    def _move_best_tag(self, run_id: str) -> None:
        marked = [run for run in self.client.search_runs([self.experiment_id], "tags.`optuna.best` = 'true'",
                                                         max_results=1000)
                  if run.data.tags.get("optuna.study") == self.study.study_name]
        for run in marked:
            if run.info.run_id != run_id:
                self.client.set_tag(run.info.run_id, "optuna.best", "false")
        if run_id not in {run.info.run_id for run in marked}:
            self.client.set_tag(run_id, "optuna.best", "true")
