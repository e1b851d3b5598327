"""Every method does a short end-to-end run through train.run, and its MLflow record reads back."""

import json
from pathlib import Path

import mlflow
import pytest

from workbench import ROOT
from workbench.train import run

METHODS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))


@pytest.mark.parametrize("method", METHODS)
def test_method_fast_run(fast_cfg, method, tmp_path):
    summary = run(fast_cfg(method))
    m = summary["metrics"]
    assert m["steps"] == 4
    assert 0.0 <= m["test/accuracy"] <= 1.0 and 0.0 <= m["test_before/accuracy"] <= 1.0
    assert (tmp_path / "run" / "summary.json").is_file()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["mlflow_run_id"] == summary["mlflow_run_id"]


GROUP_RL = [m for m in METHODS if m != "sft"]


@pytest.mark.parametrize("method", GROUP_RL)
def test_group_rl_method_raises_its_training_accuracy(fast_cfg, method):
    """A short run of each group-RL method on a small problem set moves its accuracy the right way.

    Same small task and SFT start for every method (the base is cached across them); the metric is the
    verifier's accuracy on the sampled completions (train/accuracy), which every method logs whatever
    its reward mix is. Deterministic here (1 thread, fixed seed).
    """
    cfg = fast_cfg(method, [
        "task.max_value=9", "task.train_size=40", "task.val_size=8", "task.test_size=8",
        "model.hidden_size=64", "model.intermediate_size=128",
        "method.base.max_steps=150", "method.base.val_check_interval=150", "method.base.batch_size=16",
        "method.group_size=8", "method.batch_size=8", "method.lr=3e-4", "method.beta=0",
        "trainer.max_steps=150", "method.val_check_interval=150",
        *(["method.kl_in_reward=false"] if method in ("rloo", "reinforce_pp") else []),
        # BRPO samples G * budgets * A summaries per prompt: fewer of them, fewer steps
        *(["method.summaries_per_split=2", "trainer.max_steps=80"] if method == "brpo" else []),
    ])
    summary = run(cfg)
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    acc = [m.value for m in sorted(client.get_metric_history(summary["mlflow_run_id"], "train/accuracy"), key=lambda m: m.step)]
    first, last = sum(acc[:15]) / 15, sum(acc[-15:]) / 15
    assert 0.02 < first < 0.9, f"the SFT start should solve some but not all problems, got {first}"
    assert last > first + 0.03, (method, first, last)
