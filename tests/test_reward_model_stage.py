"""A reward entry {name: reward_model, train: {...}}: the run trains the Bradley-Terry reward model on its own task's
pairs first (a cached child stage, like the SFT base), then optimises against it (workbench/runner.py
reward_model_stages). Used by the BLEUBERI claim (conf/experiment/claims/bleuberi.yaml): GRPO on a learned RM of the
same prompts is one command."""

import mlflow
import pytest

import workbench.runner as runner
from workbench.config import cache_key, reward_model_config
from workbench.errors import ConfigError
from workbench.rewards import RewardSet
from workbench.tasks.preference_synthetic import SyntheticPreferenceTask
from workbench.train import run

RM = "{name: reward_model, train: {max_steps: 3, val_check_interval: 3, batch_size: 4, max_length: 32}}"


def test_config_is_the_reward_model_method_on_this_runs_task_model_and_seed(fast_cfg):
    cfg = fast_cfg("grpo", ["task=synthetic_preference", "seed=3", f"method.rewards=[{RM}]"])
    rm = reward_model_config(cfg, cfg.method.rewards[0].train)
    assert rm.method.name == "reward_model" and rm.method.max_steps == 3 and rm.method.batch_size == 4
    assert rm.method.lr == 1.0e-3 and rm.method.backbone == "policy"  # the rest from conf/method/reward_model.yaml
    assert rm.trainer.max_steps == 3 and rm.seed == 3 and rm.task == cfg.task and rm.model == cfg.model
    assert cfg.method.name == "grpo"  # the run's own config is untouched
    rm.method.save_dir = None
    other = reward_model_config(cfg, {**cfg.method.rewards[0].train, "max_steps": 4})
    other.method.save_dir = None
    assert cache_key(rm) != cache_key(other)


def test_grpo_on_a_reward_model_it_trains_first_then_reuses(fast_cfg, _cache_dir, monkeypatch):
    cfg = fast_cfg("grpo", ["task=synthetic_preference", f"method.rewards=[{RM}]"])
    m = run(cfg)["metrics"]
    assert m["steps"] == 4 and "train/reward" in m
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id])
    stages = {r.data.tags.get("workbench.stage"): r for r in runs}
    child, main = stages["reward_model"], stages["main"]
    assert child.data.tags["mlflow.parentRunId"] == main.info.run_id and child.info.status == "FINISHED"
    assert child.data.params["method.name"] == "reward_model" and "test/reward_accuracy" in child.data.metrics
    folder = main.data.tags["workbench.reward_model_path.0"]
    assert folder.startswith(str(_cache_dir / "reward_model" / "synthetic_preference-"))
    assert child.data.tags["workbench.reward_model_path"] == folder
    # the cached folder is the reward: it scores like the entry the run built from it
    task = SyntheticPreferenceTask(train_size=64, val_size=8, test_size=8)
    reward = RewardSet([{"name": "reward_model", "path": folder}], task)
    total, _ = reward(["1+2=", "1+2="], ["3", "9"])
    assert total.shape == (2,) and total[0] != total[1]
    # a second run with the same reward model settings reuses the folder instead of training again
    monkeypatch.setattr(runner, "_train_reward_model", lambda *a, **k: pytest.fail("retrained a cached reward model"))
    again = run(fast_cfg("grpo", ["task=synthetic_preference", f"method.rewards=[{RM}]"], run_dir="run2"))
    assert again["metrics"]["steps"] == 4


def test_train_needs_a_run_and_excludes_path(fast_cfg):
    task = SyntheticPreferenceTask(train_size=64, val_size=8, test_size=8)
    with pytest.raises(ConfigError, match=r"method\.rewards\[0\]\.train"):
        RewardSet([{"name": "reward_model", "train": {"max_steps": 3}}], task)
    cfg = fast_cfg("grpo", ["task=synthetic_preference", "method.rewards=[{name: reward_model, path: /nowhere, train: {}}]"])
    with pytest.raises(ConfigError, match=r"method\.rewards\[0\]\.train"):
        run(cfg)
    cfg = fast_cfg("grpo", ["task=arithmetic", f"method.rewards=[{RM}]"])
    with pytest.raises(ConfigError, match="pairs"):  # the reward model's own config check: a task with pairs
        run(cfg)
