"""The job side of a sweep: the sweeper passes ``++optuna={storage, study, trial, monitor, report, parent_run, pruner}``;
the job reports its validation metric to the trial and stops early when the study's pruner says so.

With several seeds per trial, the first seed's job reports (a trial has one value per step) and every seed's
job asks the pruner, so all seeds of a pruned trial stop."""

from __future__ import annotations

import logging
import math

from lightning.pytorch import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

PRUNED_METRIC = "optuna/pruned_at_step"


def open_trial(spec: DictConfig):
    import optuna
    from omegaconf import OmegaConf

    from workbench.sweep.study import make_pruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = make_pruner(OmegaConf.to_container(spec.pruner) if spec.get("pruner") else None)
    study = optuna.load_study(study_name=spec.study, storage=spec.storage, pruner=pruner)
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(spec.trial))
    return optuna.Trial(study, trial_id)


class OptunaPruning(Callback):
    """After each validation: report ``monitor`` at the global step, and stop training if the trial is pruned."""

    def __init__(self, spec: DictConfig):
        self.spec = spec
        self.monitor = spec.get("monitor")
        self.report = bool(spec.get("report", True))
        self.trial = open_trial(spec)
        self.pruned_at: int | None = None
        self._warned = False

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self.monitor:
            return
        prune = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is None:
                if not self._warned:
                    log.warning("optuna: no validation metric '%s' (have %s); this trial cannot be pruned",
                                self.monitor, sorted(trainer.callback_metrics))
                    self._warned = True
            elif math.isfinite(float(value)):
                if self.report:
                    self.trial.report(float(value), step=trainer.global_step)
                # at the last step there is nothing left to save, and pruning would throw away the finished run
                prune = trainer.global_step < trainer.max_steps and self.trial.should_prune()
        # every rank stops together, or DDP waits forever on the rank that left
        prune = trainer.strategy.reduce_boolean_decision(prune, all=False)
        if prune:
            self.pruned_at = trainer.global_step
            trainer.should_stop = True
            log.info("optuna: trial %s pruned at step %d", self.spec.trial, trainer.global_step)
