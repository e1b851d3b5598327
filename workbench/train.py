"""python -m workbench.train [method=...] [model=...] [task=...] [trainer=...] [seed=...] [resume=<run dir>]

The CLI: Hydra composes conf/train.yaml, the config is checked before torch or Lightning load (so a bad
value answers in a second), then workbench.runner.run does the work.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from workbench.config import validate
from workbench.errors import ConfigError


def run(cfg: DictConfig) -> dict:
    from workbench.runner import run as run_config

    return run_config(cfg)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        if not cfg.get("resume"):
            validate(cfg)
        summary = run(cfg)
    except ConfigError as e:
        print(f"workbench: error: {e}", file=sys.stderr)
        sys.exit(2)
    metrics = summary["metrics"]
    for key in ("test/accuracy", "test/success_rate", "test/normalized_score"):  # the objective Optuna maximizes
        if key in metrics:
            return metrics[key]
    return None


if __name__ == "__main__":
    main()
