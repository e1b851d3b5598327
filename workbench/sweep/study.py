"""Opening a study on any SQLAlchemy storage, its sampler and pruner, its trial budget, interrupted trials.

Several sweeper processes (on one machine or many) share a study by naming the same ``study_name`` and
``storage``: each asks for trials until the study holds ``n_trials`` of them. A sweeper killed mid-trial
leaves RUNNING trials behind; the next sweeper on the same machine finds them (their worker process is gone),
marks them failed with ``interrupted`` set, and queues their parameters again, so a resumed study redoes them.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime
from typing import Any, Mapping

import optuna
from optuna.trial import TrialState

from workbench.errors import ConfigError
from workbench.stores import SQLITE, open_store, sqlite_path

log = logging.getLogger(__name__)

SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "qmc": optuna.samplers.QMCSampler,
    "gp": optuna.samplers.GPSampler,
}
PRUNERS = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "threshold": optuna.pruners.ThresholdPruner,
}
DIRECTIONS = ("maximize", "minimize")


def _build(kind: str, registry: dict, spec: Mapping[str, Any] | None, default: str):
    spec = dict(spec or {})
    name = str(spec.pop("name", default) or default)
    if name not in registry:
        raise ConfigError(f"hydra.sweeper.{kind}.name", f"unknown {kind} '{name}'", f"use one of {sorted(registry)}")
    try:
        return registry[name](**spec)
    except TypeError as e:
        raise ConfigError(f"hydra.sweeper.{kind}", f"{name}: {e}", f"see optuna.{kind}s.{registry[name].__name__} for its arguments") from None


def make_sampler(spec: Mapping[str, Any] | None) -> optuna.samplers.BaseSampler:
    return _build("sampler", SAMPLERS, spec, "tpe")


def sampler_for(study: optuna.Study, spec: Mapping[str, Any] | None) -> optuna.samplers.BaseSampler:
    """The sweep's sampler, its seed moved on by the trials the study already holds: a sampler keeps its random
    state in the process, so a resumed study (or a later worker) seeded alike would draw the first trials'
    parameters again. A fresh study gets exactly the configured seed."""
    spec = dict(spec or {})
    if spec.get("seed") is not None:
        spec["seed"] = int(spec["seed"]) + len(study.get_trials(deepcopy=False))
    return make_sampler(spec)


def make_pruner(spec: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    return _build("pruner", PRUNERS, spec, "none")


def absolute_storage(storage: str | None) -> str | None:
    """A relative sqlite path made absolute: jobs of other launchers (submitit, joblib) may run elsewhere."""
    path = sqlite_path(storage)
    return storage if path is None else SQLITE + str(path)


def open_study(name: str, storage: str | None, direction: str, sampler=None, pruner=None) -> optuna.Study:
    if direction not in DIRECTIONS:
        raise ConfigError("hydra.sweeper.direction", f"unknown '{direction}'", "use maximize or minimize")
    if not name:
        raise ConfigError("hydra.sweeper.study_name", "is empty", "name the study, e.g. hydra.sweeper.study_name=grpo_lr")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = open_store(storage, lambda: optuna.create_study(study_name=name, storage=storage, direction=direction,
                                                                sampler=sampler, pruner=pruner, load_if_exists=True))
    except Exception as e:  # noqa: BLE001 - bad URL, missing driver, unreachable server: SQLAlchemy raises many kinds
        raise ConfigError("hydra.sweeper.storage", f"cannot open '{storage}' ({type(e).__name__}: {str(e).splitlines()[0]})",
                          "give a SQLAlchemy URL such as sqlite:///optuna.db or postgresql+psycopg2://user@host/db") from None
    if study.direction.name.lower() != direction:
        raise ConfigError("hydra.sweeper.direction", f"study '{name}' in this storage was created to {study.direction.name.lower()}",
                          "keep its direction, or use a new hydra.sweeper.study_name")
    return study


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_gone(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's process: only it (or a person) can tell whether it is alive
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# A sweeper stamps its worker id right after asking; a RUNNING trial still unstamped after this long lost its
# sweeper between the two calls.
UNOWNED_GRACE_S = 60.0


def ask_owned(study: optuna.Study, space: dict) -> optuna.Trial:
    trial = study.ask(space)
    trial.set_user_attr("worker", worker_id())
    return trial


def _orphaned(trial: optuna.trial.FrozenTrial) -> bool:
    worker = trial.user_attrs.get("worker")
    if worker:
        return _process_gone(worker)
    started = trial.datetime_start
    return started is not None and (datetime.now() - started).total_seconds() > UNOWNED_GRACE_S


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials whose sweeper is gone, and queue their params again.

    Gone means: its process on this machine no longer exists, or it never stamped its worker id (killed between
    ``ask`` and the stamp) and the trial is older than ``UNOWNED_GRACE_S``.
    """
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _orphaned(t):
            continue
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(dict(t.params), user_attrs={"retry_of": t.number})
        recovered.append(t.number)
    if recovered:
        log.warning("study %s: trials %s were interrupted; they are marked failed and queued again", study.study_name, recovered)
    return recovered


def trials_used(study: optuna.Study) -> int:
    """Trials that count against ``n_trials``: finished, failed (not interrupted) and running ones."""
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    return sum(1 for t in study.get_trials(deepcopy=False, states=counted) if not t.user_attrs.get("interrupted"))


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no complete trial yet
        return None
