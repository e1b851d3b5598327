"""The group-RL module's switches in real (tiny) runs: shared-prefix equality, metrics, reward state, backends."""

from __future__ import annotations

import math

import mlflow
import pytest
import torch

from workbench.errors import ConfigError
from workbench.policy.generation import HFGenerator, VLLMGenerator, build_generator
from workbench.methods.group_rl.module import window_summary
from workbench.tasks.arithmetic import ArithmeticTask
from workbench.train import run


def _history(cfg, run_id: str, key: str) -> list[float]:
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_shared_prefix_run_equals_the_naive_run(fast_cfg):
    """Same seed, same samples: the prompt-once forward gives the same losses and the same trained policy."""
    extra = ["method.group_size=4", "method.beta=0.04"]
    naive = run(fast_cfg("grpo", [*extra, "method.shared_prefix=false"], run_dir="naive"))
    shared_cfg = fast_cfg("grpo", [*extra, "method.shared_prefix=true"], run_dir="shared")
    shared = run(shared_cfg)
    for key in ("train/loss", "train/kl", "train/reward"):
        a, b = _history(shared_cfg, naive["mlflow_run_id"], key), _history(shared_cfg, shared["mlflow_run_id"], key)
        assert len(a) == len(b) == 4
        assert all(math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-5) for x, y in zip(a, b)), (key, a, b)


def test_group_rl_step_metrics_are_logged(fast_cfg):
    cfg = fast_cfg("dapo", ["method.group_size=4", "method.eval.pass_k=[1,2]", "method.eval.num_samples=2"])
    summary = run(cfg)
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    keys = set(client.get_run(summary["mlflow_run_id"]).data.metrics)
    expected = {
        "train/reward", "train/reward_std", "train/accuracy", "train/frac_zero_std_groups", "train/clip_frac_low",
        "train/clip_frac_high", "train/entropy", "train/completion_length", "train/truncated_frac", "train/tokens_per_s",
        "train/time_generation", "train/time_logprobs", "train/time_update", "train/dynamic_sampling/fill_frac",
        "train/dynamic_sampling/resample_rounds", "train/reward/correctness", "train/reward/soft_overlong",
        "test/pass_at_1", "test/pass_at_2", "test_before/pass_at_2",
    }
    assert expected <= keys, sorted(expected - keys)
    assert keys & {"train/completion_length_correct", "train/completion_length_incorrect"}
    fill = _history(cfg, summary["mlflow_run_id"], "train/dynamic_sampling/fill_frac")
    assert len(fill) == 4 and all(0.0 <= f <= 1.0 for f in fill)


def test_window_summary_on_hand_values():
    history = {"entropy": [1.0, 2.0, 3.0, 4.0, 5.0], "completion_length_incorrect": [], "reward": [0.5]}
    assert window_summary(history, 2) == {
        "train_early/entropy": 1.5, "train_late/entropy": 4.5, "train_growth/entropy": 3.0,
        "train_early/reward": 0.5, "train_late/reward": 0.5, "train_growth/reward": 0.0,
    }  # a metric never logged (no incorrect completion at any step) has no summary
    assert window_summary(history, 0) == {}
    assert window_summary({"x": [1.0, 3.0]}, 5) == {"train_early/x": 2.0, "train_late/x": 2.0, "train_growth/x": 0.0}


def test_group_rl_run_logs_window_summary_and_accuracy_by_difficulty(fast_cfg, tmp_path):
    cfg = fast_cfg("grpo", ["method.summary_window=2", "task.num_operands=[4,2]", "task.max_value=[9,99]"])
    summary = run(cfg)
    run_id = summary["mlflow_run_id"]
    metrics = mlflow.MlflowClient(cfg.logger.tracking_uri).get_run(run_id).data.metrics
    for key in ("entropy", "reward", "completion_length"):
        values = _history(cfg, run_id, f"train/{key}")
        assert len(values) == 4
        early, late = sum(values[:2]) / 2, sum(values[2:]) / 2
        assert math.isclose(metrics[f"train_early/{key}"], early, rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(metrics[f"train_late/{key}"], late, rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(metrics[f"train_growth/{key}"], late - early, rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(summary["metrics"][f"train_late/{key}"], late, rel_tol=1e-5, abs_tol=1e-6)
    # the history travels with the checkpoint (a resumed run's windows cover the steps before the interruption)
    ckpt = sorted((tmp_path / "run" / "checkpoints").glob("*.ckpt"))[-1]
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["workbench_train_history"]["entropy"]
    assert saved and all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(saved, _history(cfg, run_id, "train/entropy")))
    # held-out accuracy per difficulty level, weighted by the level's rows, adds up to the overall accuracy
    task = ArithmeticTask(num_operands=[4, 2], max_value=[9, 99], train_size=cfg.task.train_size, val_size=cfg.task.val_size,
                          test_size=cfg.task.test_size, seed=cfg.task.seed)
    levels = list(task.splits["test"]["difficulty"])
    assert set(levels) == {"4ops_max9", "2ops_max99"}
    for prefix in ("test_before", "test"):
        by_level = sum(levels.count(lv) * metrics[f"{prefix}/accuracy_{lv}"] for lv in set(levels)) / len(levels)
        assert math.isclose(by_level, metrics[f"{prefix}/accuracy"], abs_tol=1e-6)
    assert "val/accuracy_4ops_max9" in metrics


def test_accuracy_by_difficulty_on_hand_values():
    """Each level's accuracy over its rows, logged with its row count as weight; a level absent from the batch
    is logged with weight 0 (so every DDP rank logs the same keys) and does not move the epoch mean."""
    from types import SimpleNamespace

    from workbench.methods.base import PolicyModule

    logged = []
    stub = SimpleNamespace(task=SimpleNamespace(difficulty_levels=lambda: ["2ops", "3ops", "4ops"]),
                           log=lambda name, value, batch_size, **kw: logged.append((name, float(value), batch_size)))
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    PolicyModule._log_by_difficulty(stub, ["2ops", "3ops", "2ops", "2ops", "3ops"], correct, "test")
    assert logged == [("test/accuracy_2ops", 1.0, 3), ("test/accuracy_3ops", 0.0, 2), ("test/accuracy_4ops", 0.0, 0)]
    logged.clear()
    PolicyModule._log_by_difficulty(stub, ["3ops", "2ops", "3ops", "4ops"], torch.tensor([1.0, 0.0, 0.0, 1.0]), "val")
    assert logged == [("val/accuracy_2ops", 0.0, 1), ("val/accuracy_3ops", 0.5, 2), ("val/accuracy_4ops", 1.0, 1)]


def test_hapo_history_is_saved_in_checkpoints(fast_cfg, tmp_path):
    cfg = fast_cfg("hapo", ["method.group_size=4"])
    run(cfg)
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert ckpts
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=True)["workbench_reward_state"]
    assert "hapo_length" in state


def test_hf_generator_is_the_shared_sampler():
    gen = build_generator({"backend": "hf"})
    assert isinstance(gen, HFGenerator)
    gen.sync(None)  # nothing to push: HF samples from the live model


def test_unknown_backend_names_the_field():
    with pytest.raises(ConfigError) as info:
        build_generator({"backend": "tgi"})
    assert info.value.field == "method.generation.backend"


def test_vllm_backend_without_gpu_or_package_is_a_config_error():
    try:
        import vllm  # noqa: F401
        has_vllm = True
    except ImportError:
        has_vllm = False
    if has_vllm and torch.cuda.is_available():
        pytest.skip("vllm and a GPU are present: the real backend is exercised by test_vllm_backend_samples")
    with pytest.raises(ConfigError) as info:
        VLLMGenerator()
    assert info.value.field == "method.generation.backend"


def test_vllm_backend_samples(fast_cfg):
    pytest.importorskip("vllm", reason="vllm is an optional extra for GPU machines; not installed here")
    if not torch.cuda.is_available():
        pytest.skip("vllm needs a CUDA GPU; none on this machine")
    summary = run(fast_cfg("grpo", ["trainer=gpu", "method.generation.backend=vllm", "model.dtype=bfloat16"]))
    assert summary["metrics"]["steps"] == 4


def test_shared_prefix_on_an_unsupported_attention_is_a_config_error(fast_cfg, monkeypatch):
    from workbench.methods.group_rl.module import GroupRLModule

    cfg = fast_cfg("grpo")
    captured = {}
    original = GroupRLModule._check_shared_prefix_support

    def spy(self):
        self.model.config._attn_implementation = "flash_attention_2"
        captured["called"] = True
        original(self)

    monkeypatch.setattr(GroupRLModule, "_check_shared_prefix_support", spy)
    with pytest.raises(ConfigError) as info:
        run(cfg)
    assert captured["called"] and info.value.field == "method.shared_prefix"
