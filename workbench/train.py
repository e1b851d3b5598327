"""python -m workbench.train [method=...] [model=...] [task=...] [trainer=...] [seed=...] [resume=<run dir>]

The CLI: Hydra composes conf/train.yaml, the config is checked before torch or Lightning load (so a bad
value answers in a second), then workbench.runner.run does the work.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, open_dict

from workbench.config import validate
from workbench.errors import ConfigError


def run(cfg: DictConfig) -> dict:
    from workbench.runner import run as run_config

    return run_config(cfg)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> dict | None:
    """Returns the run's final metrics: the Optuna sweeper reads its objective (``hydra.sweeper.metric``) there."""
    in_trial = bool(cfg.get("optuna"))
    if "claim" in cfg:  # a claim's grid (conf/experiment/claims/) is the report command's, not part of a run's params
        with open_dict(cfg):
            cfg.pop("claim")
    try:
        if not cfg.get("resume"):
            validate(cfg)
        summary = run(cfg)
    except ConfigError as e:
        if in_trial:  # the sweeper marks this trial failed and goes on; an exit would end the whole study
            raise
        print(f"workbench: error: {e}", file=sys.stderr)
        sys.exit(2)
    except SystemExit as e:  # a NaN loss ends a run with a one-line exit message
        if in_trial and e.code not in (0, None):
            raise RuntimeError(str(e.code)) from None
        raise
    return summary["metrics"]


if __name__ == "__main__":
    main()
