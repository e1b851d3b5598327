"""Hydra sweeper on Optuna >= 4 (``hydra/sweeper=workbench_optuna``); the logic lives in ``workbench.sweep``."""
