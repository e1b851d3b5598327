"""A Hydra sweeper on Optuna's ask-and-tell API.

Each round asks the study for ``n_jobs`` trials, gives each one MLflow run of its own, launches one job per
(trial, seed) through the configured Hydra launcher (basic: one after another; joblib: in parallel; submitit:
on SLURM), scores a trial by the mean of its seeds' ``metric``, and tells the study. A job that raises marks its
trial failed and the study goes on; a job whose pruning callback stopped it marks its trial pruned.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from workbench.errors import ConfigError
from workbench.sweep.space import format_value, parse_search_space, trial_overrides
from workbench.sweep.study import (absolute_storage, ask_owned, best_trial, make_pruner, make_sampler, open_study, recover_interrupted,
                                  sampler_for, trials_used)
from workbench.sweep.tracking import TrialRuns
from workbench.sweep.trial import PRUNED_METRIC

log = logging.getLogger(__name__)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"hydra.sweeper.{name}", f"must be a whole number >= 1, got {value!r}", f"set hydra.sweeper.{name}=1 or more")
    return value


class WorkbenchOptunaSweeper(Sweeper):
    def __init__(self, study_name: str, storage: str | None, direction: str, metric: str, monitor: str | None,
                 n_trials: int, n_jobs: int, seeds_per_trial: int, sampler: dict, pruner: dict,
                 params: dict | None = None) -> None:
        self.study_name, self.storage, self.direction = study_name, absolute_storage(storage), direction
        self.metric, self.monitor = metric, monitor
        self.n_trials = _positive_int("n_trials", n_trials)
        self.n_jobs = _positive_int("n_jobs", n_jobs)
        self.seeds_per_trial = _positive_int("seeds_per_trial", seeds_per_trial)
        self.sampler_spec = OmegaConf.to_container(sampler) if isinstance(sampler, DictConfig) else dict(sampler or {})
        self.pruner_spec = OmegaConf.to_container(pruner) if isinstance(pruner, DictConfig) else dict(pruner or {})
        self.params = dict(params or {})
        if not self.storage:
            raise ConfigError("hydra.sweeper.storage", "is empty: jobs find their trial through the storage",
                              "use sqlite:///optuna.db (one machine) or a postgresql+psycopg2:// URL")

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context, task_function=task_function, config=config)

    # ---- one trial's jobs ------------------------------------------------------------------------------
    def _job_overrides(self, fixed: Sequence[str], trial, run_id: str, seed: int, first: bool) -> list[str]:
        # the storage keeps no pruner: the job builds the sweep's own from its spec
        spec = {"storage": self.storage, "study": self.study_name, "trial": trial.number, "monitor": self.monitor,
                "report": first, "parent_run": run_id, "pruner": self.pruner_spec}
        return [*fixed, *trial_overrides(trial.params), f"seed={seed}", f"++optuna={format_value(spec)}",
                f"hydra.sweep.subdir=trial{trial.number}-s{seed}"]

    def _composes(self, overrides: list[str]) -> str | None:
        try:
            self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        except Exception as e:  # noqa: BLE001 - any composition error fails this trial only
            return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return None

    def _score(self, seeds: list[int], returns: list[JobReturn | str]) -> tuple[TrialState, float | None, dict, str | None]:
        values: dict[str, float] = {}
        errors, pruned = [], False
        for seed, ret in zip(seeds, returns):
            if isinstance(ret, str):
                errors.append(f"seed {seed}: {ret}")
                continue
            if ret.status != JobStatus.COMPLETED:
                try:
                    ret.return_value
                except Exception as e:  # noqa: BLE001 - the job's own exception, re-raised by Hydra's JobReturn
                    errors.append(f"seed {seed}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                continue
            metrics = ret.return_value or {}
            if PRUNED_METRIC in metrics:
                pruned = True
            value = metrics.get(self.metric)
            if value is None or not math.isfinite(float(value)):
                if PRUNED_METRIC not in metrics:
                    errors.append(f"seed {seed}: no finite '{self.metric}' in the run's metrics "
                                  f"(hydra.sweeper.metric; the run has {sorted(metrics)[:12]})")
                continue
            values[str(seed)] = float(value)
        if errors:
            return TrialState.FAIL, None, values, "; ".join(errors)
        if pruned:
            return TrialState.PRUNED, None, values, None
        return TrialState.COMPLETE, sum(values.values()) / len(values), values, None

    # ---- the study ---------------------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> Any:
        space, fixed = parse_search_space(self.params, arguments)
        fixed = [o for o in fixed if not o.split("=", 1)[0].lstrip("+") == "seed"]  # seeds come from seeds_per_trial
        make_sampler(self.sampler_spec)  # a bad sampler spec fails before the study is touched
        study = open_study(self.study_name, self.storage, self.direction, pruner=make_pruner(self.pruner_spec))
        study.sampler = sampler_for(study, self.sampler_spec)
        base_seed = int(self.config.seed)
        seeds = [base_seed + i for i in range(self.seeds_per_trial)]
        for key, value in {"metric": self.metric, "monitor": self.monitor, "seeds_per_trial": self.seeds_per_trial,
                           "seeds": seeds, "fixed_overrides": fixed, "space": {k: repr(d) for k, d in space.items()}}.items():
            if key not in study.user_attrs:  # the first sweeper of a study describes it; later ones join it
                study.set_user_attr(key, value)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        runs = TrialRuns(self.config.logger.tracking_uri, self.config.logger.experiment_name, study, self.metric)
        runs.interrupted(recover_interrupted(study))
        log.info("Optuna study '%s' (%s, %s %s): %d of %d trials done; space %s", self.study_name, self.storage,
                 self.direction, self.metric, trials_used(study), self.n_trials, sorted(space))
        job_idx = 0
        while (remaining := self.n_trials - trials_used(study)) > 0:
            trials = [ask_owned(study, space) for _ in range(min(self.n_jobs, remaining))]
            try:
                job_idx = self._round(study, runs, trials, fixed, seeds, str(sweep_dir), job_idx)
            except BaseException:
                self._interrupted(study, runs, trials)
                raise
        best = best_trial(study)
        if best is not None:
            log.info("Best trial %d: %s = %.4g with %s (MLflow run %s)", best.number, self.metric, best.value,
                     best.params, best.user_attrs.get("mlflow_run_id"))
        log.info("Summary: python -m workbench.sweep.summary --study %s --storage '%s'", self.study_name, self.storage)
        return study

    def _round(self, study, runs: TrialRuns, trials: list, fixed: list[str], seeds: list[int], sweep_dir: str, job_idx: int) -> int:
        batch: list[list[str]] = []
        owners: list[tuple[Any, int | None]] = []  # (trial, index into batch or None when it did not compose)
        returns: dict[int, list[JobReturn | str]] = {t.number: [] for t in trials}
        run_ids: dict[int, str] = {}
        for trial in trials:
            run_id = run_ids[trial.number] = runs.start(trial, sweep_dir, {"optuna.seeds": ",".join(map(str, seeds))})
            for i, seed in enumerate(seeds):
                overrides = self._job_overrides(fixed, trial, run_id, seed, first=i == 0)
                error = self._composes(overrides)
                if error:
                    returns[trial.number].append(error)
                else:
                    owners.append((trial, len(batch)))
                    batch.append(overrides)
        results = self.launcher.launch(batch, initial_job_idx=job_idx) if batch else []
        for trial, index in owners:
            returns[trial.number].append(results[index])
        for trial in trials:
            state, value, per_seed, error = self._score(seeds, returns[trial.number])
            if per_seed:
                trial.set_user_attr("seed_values", per_seed)
            if error:
                trial.set_user_attr("error", error[:2000])
                log.warning("trial %d failed: %s", trial.number, error)
            study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
            runs.finish(run_ids[trial.number], state, value, per_seed, error)
            shown = f"{self.metric} = {value:.4g}" if value is not None else state.name
            log.info("trial %d: %s  %s", trial.number, shown, trial.params)
        runs.mark_best()
        return job_idx + len(batch)

    def _interrupted(self, study, runs: TrialRuns, trials: list) -> None:
        """Ctrl-C (or a crash of the sweeper itself) mid-round: its trials are failed and queued again."""
        for trial in trials:
            if study._storage.get_trial(trial._trial_id).state != TrialState.RUNNING:
                continue
            trial.set_user_attr("interrupted", True)
            study.tell(trial, state=TrialState.FAIL)
            study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})
            runs.interrupted([trial.number])
