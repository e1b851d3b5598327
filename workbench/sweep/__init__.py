"""Optuna sweeps as Hydra multiruns.

- ``space``: a sweep's search space, written in Hydra's override grammar, as Optuna distributions.
- ``study``: opening a study on any SQLAlchemy storage, samplers, pruners, the trial budget, interrupted trials.
- ``tracking``: one MLflow run per trial (the parent of its seeds' runs), the best trial tagged.
- ``trial``: the job side: the Lightning callback that reports validation metrics and stops a pruned trial.
- ``summary``: ``python -m workbench.sweep.summary --study NAME``: best params, importances, history plot.

The Hydra plugin itself is ``hydra_plugins/workbench_optuna_sweeper`` (``hydra/sweeper=workbench_optuna``).
"""
