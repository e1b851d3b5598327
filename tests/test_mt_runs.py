"""Multi-turn methods in real (tiny) runs: every method finishes and logs its episode metrics; single-turn tasks
play as one-turn episodes; the family's config checks answer in one line."""

from __future__ import annotations

import mlflow
import pytest

from workbench.config import validate
from workbench.errors import ConfigError
from workbench.train import run

CRITIC_FREE_AND_PPO = ["gigpo", "grpo_multi_turn", "ppo_gae", "poad", "ma_rlhf"]


def _metrics(cfg, summary) -> dict:
    return mlflow.MlflowClient(cfg.logger.tracking_uri).get_run(summary["mlflow_run_id"]).data.metrics


@pytest.mark.parametrize("method", CRITIC_FREE_AND_PPO)
def test_method_runs_on_the_gridworld(fast_cfg, method):
    cfg = fast_cfg(method, ["task=gridworld"])
    summary = run(cfg)
    metrics = _metrics(cfg, summary)
    for key in ("test_before/success_rate", "test/success_rate", "test/turns", "test/invalid_frac", "train/reward",
                "train/success_rate", "train/turns", "train/entropy", "train/time_generation", "val/success_rate"):
        assert key in metrics, key
    assert 0.0 <= metrics["test/success_rate"] <= 1.0
    if method in ("ppo_gae", "poad", "ma_rlhf"):
        assert "train/value_loss" in metrics and "train/value_mean" in metrics
    if method in ("gigpo", "grpo_multi_turn"):
        assert 0.0 < metrics["train/anchor_groups_per_row"] <= 1.0
    assert summary["metrics"]["steps"] == 4


def test_ppo_plays_a_single_turn_task_as_one_turn_episodes(fast_cfg):
    cfg = fast_cfg("ppo_gae", ["task=arithmetic"])
    summary = run(cfg)
    metrics = _metrics(cfg, summary)
    assert metrics["train/turns"] == 1.0 and metrics["test/turns"] == 1.0


def test_guess_number_and_calculator_run(fast_cfg):
    for task in ("guess_number", "calculator"):
        cfg = fast_cfg("gigpo", [f"task={task}"], run_dir=task)
        metrics = _metrics(cfg, run(cfg))
        assert "test/success_rate" in metrics


@pytest.mark.parametrize("override,field", [
    (["method=grpo", "task=gridworld"], "method"),
    (["method=gigpo", "task=gridworld", "method.gamma=1.5"], "method.gamma"),
    (["method=ppo_gae", "task=gridworld", "method.credit=td"], "method.credit"),
    (["method=poad", "task=gridworld", "method.discount_at=turn"], "method.discount_at"),
    (["method=gigpo", "task=gridworld", "method.mode=zscore"], "method.mode"),
    (["method=gigpo", "task=gridworld", "method.group_size=1"], "method.group_size"),
])
def test_bad_multi_turn_config_names_the_field(fast_cfg, tmp_path, override, field):
    from conftest import compose_cfg

    cfg = compose_cfg(override, tmp_path / "run")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(f"{field}:")
