"""``hydra/sweeper=workbench_optuna``: what a sweep definition in sweeps/ sets (all of it overridable).

No ``from __future__ import annotations`` here: Hydra executes plugin modules outside sys.modules, where
dataclasses cannot resolve string annotations."""


from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class WorkbenchOptunaSweeperConf:
    _target_: str = "hydra_plugins.workbench_optuna_sweeper.sweeper.WorkbenchOptunaSweeper"
    # one study, shared by every sweeper process that names it in the same storage
    study_name: str = "${method.name}-${task.name}"
    # any SQLAlchemy URL: sqlite for one machine, postgresql+psycopg2://user@host/db for many
    storage: Optional[str] = "${oc.env:WORKBENCH_OPTUNA_STORAGE,sqlite:///optuna.db}"
    direction: str = "maximize"
    # the objective: a final metric of the run (the mean over the trial's seeds)
    metric: str = "test/accuracy"
    # the validation metric reported to the pruner at each validation (null: never pruned)
    monitor: Optional[str] = "val/accuracy"
    # trials in the study, counted over every sweeper process sharing it
    n_trials: int = 10
    # trials asked for at once: the launcher runs their jobs together (joblib: in parallel)
    n_jobs: int = 1
    # each trial runs seeds seed, seed+1, ... and scores their mean
    seeds_per_trial: int = 1
    sampler: Dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": None})
    pruner: Dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    # key: choice(...) | range(start, stop, step) | interval(low, high) | tag(log, interval(low, high));
    # a sweep given on the command line (method.lr="interval(1e-4,1e-3)") joins these and wins on the same key
    params: Optional[Dict[str, str]] = field(default_factory=dict)  # null: only the command line's sweeps


ConfigStore.instance().store(group="hydra/sweeper", name="workbench_optuna", node=WorkbenchOptunaSweeperConf,
                             provider="workbench")
