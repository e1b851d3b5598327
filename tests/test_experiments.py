"""Experiment bundles that need a real pretrained model run end to end (at smoke size)."""

from __future__ import annotations

import pytest

from conftest import compose_cfg
from workbench.train import run

SMOKE = ["method.max_steps=2", "method.val_check_interval=2", "method.batch_size=1", "task.val_size=2",
         "task.test_size=2", "method.eval.batch_size=2", "trainer.progress_bar=false"]


def smoke_run(tmp_path, experiment: str, overrides: list[str]) -> dict:
    """The experiment bundle at smoke size: two steps, two held-out problems; its summary."""
    return run(compose_cfg([f"experiment={experiment}", *SMOKE, *overrides], tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"))


@pytest.mark.slow
def test_grpo_gsm8k_smollm2_runs_grpo_steps_on_the_real_model(tmp_path):
    """experiment=grpo_gsm8k_smollm2: GRPO on GSM8K from SmolLM2-135M-Instruct's own weights (GGUF)."""
    summary = smoke_run(tmp_path, "grpo_gsm8k_smollm2", ["method.group_size=2", "task.max_new_tokens=24", "task.train_size=16"])
    m = summary["metrics"]
    assert summary["model"] == "smollm2_135m" and summary["task"] == "gsm8k" and summary["method"] == "grpo"
    assert m["steps"] == 2
    assert 0.0 <= m["train/reward"] <= 1.0 and m["train/completion_length"] > 0
    assert "test/accuracy" in m and "test_before/accuracy" in m


@pytest.mark.slow
def test_dpo_hh_smollm2_runs_dpo_steps_on_the_real_model(tmp_path):
    """experiment=dpo_hh_smollm2: DPO on HH-RLHF dialogues (chat template) from SmolLM2-135M-Instruct's own weights."""
    summary = smoke_run(tmp_path, "dpo_hh_smollm2", ["task.train_size=8"])
    m = summary["metrics"]
    assert summary["model"] == "smollm2_135m" and summary["task"] == "hh_rlhf" and summary["method"] == "dpo"
    assert m["steps"] == 2 and m["train/loss"] > 0
    # the policy starts as the reference: every implicit reward is 0 before training, so accuracy reads 0.5
    assert m["test_before/reward_accuracy"] == 0.5 and m["test_before/reward_margin"] == 0.0
    assert 0.0 <= m["test/reward_accuracy"] <= 1.0


@pytest.mark.slow
def test_score_gsm8k_smollm2_runs_both_stages_on_the_real_model(tmp_path):
    """experiment=score_gsm8k_smollm2: SCoRe's two attempts on GSM8K with SmolLM2-135M-Instruct (chat template, no
    warm start): one step of stage I, one of stage II, SCoRe's metrics before and after."""
    summary = smoke_run(tmp_path, "score_gsm8k_smollm2", ["method.stage1_steps=1", "task.max_new_tokens=24",
                                                               "task.train_size=16"])
    m = summary["metrics"]
    assert summary["model"] == "smollm2_135m" and summary["method"] == "score" and m["steps"] == 2
    for key in ("accuracy_t1", "accuracy_t2", "delta", "delta_i_to_c", "delta_c_to_i"):
        assert f"test_before/{key}" in m and f"test/{key}" in m
    assert m["test/delta"] == pytest.approx(m["test/delta_i_to_c"] - m["test/delta_c_to_i"])
