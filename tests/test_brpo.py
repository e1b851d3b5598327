"""BRPO (AnytimeReasoner): budget segments, summary prompts, summary scoring, a real run, bad configs."""

from __future__ import annotations

import math

import mlflow
import pytest
import torch

from conftest import FAST, FAST_GRPO, compose_cfg
from workbench.errors import ConfigError
from workbench.methods.group_rl.advantages import brpo_advantage
from workbench.methods.group_rl.brpo import (
    BRPOModule, budget_prior, summary_advantages, summary_prefixes, thinking_token_advantages,
)
from workbench.policy import build_policy
from workbench.policy.sampler import Rollout
from workbench.tasks import build_task
from workbench.train import run

EOS, PAD = 2, 0


def test_thinking_tokens_get_the_advantage_of_their_budget_segment():
    """budgets [2, 4]: tokens 0-1 -> split 0, tokens 2-3 -> split 1; nothing after a trajectory's EOS."""
    split_adv = torch.tensor([[0.5, -1.0], [2.0, 3.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])  # length 3 (2 thinking tokens + EOS), length 4 (cut at b_S)
    got = thinking_token_advantages(split_adv, mask, [2, 4])
    assert torch.equal(got, torch.tensor([[0.5, 0.5, -1.0, 0.0], [2.0, 2.0, 3.0, 3.0]]))
    # a single budget is plain GRPO: every token gets the one advantage
    assert torch.equal(thinking_token_advantages(torch.tensor([[1.5]]), torch.tensor([[1, 1, 0]]), [3]), torch.tensor([[1.5, 1.5, 0.0]]))


def test_budget_priors_and_summary_advantages():
    assert torch.allclose(budget_prior([2, 4], "uniform"), torch.tensor([0.5, 0.5]))
    assert torch.allclose(budget_prior([1, 3], "linear"), torch.tensor([0.25, 0.75]))
    assert torch.equal(budget_prior([1, 2, 3], "base"), torch.tensor([0.0, 0.0, 1.0]))
    scores = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]]])  # (P=1, G=2, S=1, A=2)
    # official: vs the mean of the same trajectory's summaries at that split
    assert torch.allclose(summary_advantages(scores, "trajectory"), torch.tensor([[[[0.5, -0.5]], [[0.0, 0.0]]]]))
    # group: vs all G*A summaries of the prompt at that split (mean 0.75)
    assert torch.allclose(summary_advantages(scores, "group"), scores - 0.75)
    one = torch.tensor([[[[1.0]], [[0.0]]]])  # A = 1: the official code falls back to the group mean
    assert torch.allclose(summary_advantages(one, "trajectory"), torch.tensor([[[[0.5]], [[-0.5]]]]))
    scaled = summary_advantages(scores, "group", std_scale=True)
    assert torch.allclose(scaled, (scores - 0.75) / (scores.std() + 1e-4))


def test_summary_prompts_cut_the_thinking_at_each_budget_strip_eos_and_append_the_cue():
    prompt_ids = torch.tensor([[PAD, 5, 6], [7, 8, 9], [7, 8, 9]])
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1], [1, 1, 1]])
    completion = torch.tensor([[10, 11, EOS, PAD], [12, 13, 14, 15], [EOS, PAD, PAD, PAD]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    truncated = torch.tensor([False, True, False])
    prefixes, kept = summary_prefixes(prompt_ids, prompt_mask, completion, mask, truncated, [2, 4], [20, 21])
    assert prefixes == [
        [5, 6, 10, 11, 20, 21], [5, 6, 10, 11, 20, 21],  # ended before b=4: whole thinking, EOS stripped
        [7, 8, 9, 12, 13, 20, 21], [7, 8, 9, 12, 13, 14, 15, 20, 21],  # cut at 2, then at 4
        [7, 8, 9, 20, 21], [7, 8, 9, 20, 21],  # stopped at once: empty thinking
    ]
    assert kept.tolist() == [[2, 2], [2, 4], [0, 0]]
    prefixes, _ = summary_prefixes(prompt_ids, prompt_mask, completion, mask, truncated, [2, 4], [])  # empty cue
    assert prefixes[2] == [7, 8, 9, 12, 13]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny untrained policy and the arithmetic task, to build modules without training."""
    cfg = compose_cfg(["method=brpo", *FAST, *FAST_GRPO], tmp_path_factory.mktemp("brpo"))
    task = build_task(cfg.task)
    return cfg, task, build_policy(cfg.model, cfg.paths.cache_dir, corpus=task.corpus())


def _module(tiny, tmp_path, overrides):
    cfg, task, policy = tiny
    cfg = compose_cfg(["method=brpo", *FAST, *FAST_GRPO, *overrides], tmp_path / "run")
    return BRPOModule(policy, task, cfg.method, cfg.trainer)


def _rows(tok, texts, eos, width):
    ids = torch.full((len(texts), width), tok.pad_token_id)
    mask = torch.zeros((len(texts), width), dtype=torch.long)
    for i, text in enumerate(texts):
        row = tok(text, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if eos[i] else [])
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return ids, mask


def test_summaries_are_scored_on_cut_thinking_plus_cue_plus_summary(tiny, tmp_path):
    """score_on=full reads the answer from thinking[:k] + cue + summary; score_on=summary from the summary alone."""
    module = _module(tiny, tmp_path, ["method.budgets=[1,6]", "method.summaries_per_split=1", "method.score_on=full"])
    tok = module.tokenizer
    prompt_ids, prompt_mask = _rows(tok, ["3+4=", "3+4="], [False, False], 4)
    # trajectory 0 answers '7' and stops; trajectory 1 writes '73' and hits the limit (no EOS)
    think_ids, think_mask = _rows(tok, ["7", "73"], [True, False], 3)
    think = Rollout(prompt_ids, prompt_mask, think_ids, think_mask, ["7", "73"], torch.tensor([False, True]))
    # one summary per (trajectory, budget), rows (g0,b1), (g0,b6), (g1,b1), (g1,b6): each stops at once
    summ_ids, summ_mask = _rows(tok, ["", "", "", ""], [True] * 4, 1)
    summ = Rollout(prompt_ids.repeat(2, 1), prompt_mask.repeat(2, 1), summ_ids, summ_mask, [""] * 4, torch.tensor([False] * 4))
    _, kept = summary_prefixes(prompt_ids, prompt_mask, think_ids, think_mask, think.truncated, module.budgets, module.cue_ids)
    batch = {"prompt": ["3+4="], "target": ["7"], "answer": ["7"]}
    scores, parts, correct = module._score_summaries(batch, think, summ, kept)
    assert scores.shape == (1, 2, 2, 1)
    assert scores.squeeze().tolist() == [[1.0, 1.0], [1.0, 0.0]]  # '7' at both budgets; '7' then '73'
    assert torch.equal(correct, scores)
    # trajectory 1 is right early and wrong late: its first token is credited, the later one blamed
    adv = brpo_advantage(scores, module.budget_probs)
    token_adv = thinking_token_advantages(adv.view(2, 2), think_mask.float(), module.budgets)
    assert token_adv[1, 0] > token_adv[1, 1] and token_adv[1, 1] < 0
    module.brpo["score_on"] = "summary"  # the empty summaries alone hold no answer
    scores, _, _ = module._score_summaries(batch, think, summ, kept)
    assert scores.sum() == 0


def _history(cfg, run_id, key):
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_brpo_fast_run_logs_scores_per_budget(fast_cfg):
    cfg = fast_cfg("brpo", ["method.summaries_per_split=2"])
    summary = run(cfg)
    assert summary["metrics"]["steps"] == 4
    keys = set(mlflow.MlflowClient(cfg.logger.tracking_uri).get_run(summary["mlflow_run_id"]).data.metrics)
    budgets = list(cfg.method.budgets)
    assert budgets == [1, 2, cfg.task.max_new_tokens]
    expected = {f"train/brpo/score_at_{b}" for b in budgets} | {
        "train/reward", "train/accuracy", "train/loss", "train/loss_thinking", "train/loss_summary", "train/kl",
        "train/entropy", "train/advantage_abs", "train/summary_advantage_abs", "train/completion_length",
        "train/summary_length", "train/time_generation", "train/time_summaries", "train/time_update", "test/accuracy",
    }
    assert expected <= keys, sorted(expected - keys)
    final = _history(cfg, summary["mlflow_run_id"], f"train/brpo/score_at_{budgets[-1]}")
    reward = _history(cfg, summary["mlflow_run_id"], "train/reward")
    assert len(final) == 4 and all(0.0 <= s <= 1.0 for s in final)
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(final, reward))  # the reward is the last budget's score


def test_brpo_variants_run(fast_cfg):
    """Other prior, group baseline with std scaling, token-mean loss, minibatches and the shared-prefix path."""
    cfg = fast_cfg("brpo", ["method.budgets=[2,4]", "method.budget_prior=linear", "method.summary_baseline=group",
                            "method.summary_std_scale=true", "method.loss_agg=token_mean", "method.minibatch_size=4",
                            "method.shared_prefix=true", "method.summaries_per_split=2", "method.summary_loss_weight=0.5",
                            "method.beta=0", "method.log_kl=false", "trainer.max_steps=2"])
    summary = run(cfg)
    assert summary["metrics"]["steps"] == 2
    assert len(_history(cfg, summary["mlflow_run_id"], "train/brpo/score_at_4")) == 2


@pytest.mark.parametrize("override,field", [
    ("method.budgets=[4,2]", "method.budgets"),
    ("method.budgets=[0,2]", "method.budgets"),
    ("method.budgets=[]", "method.budgets"),
    ("method.budgets=[1.5,3]", "method.budgets"),
    ("method.budget_prior=exponential", "method.budget_prior"),
    ("method.summaries_per_split=0", "method.summaries_per_split"),
    ("method.summary_max_new_tokens=0", "method.summary_max_new_tokens"),
    ("method.summary_baseline=median", "method.summary_baseline"),
    ("method.score_on=prompt", "method.score_on"),
    ("method.summary_loss_weight=-1", "method.summary_loss_weight"),
    ("method.inner_iterations=2", "method.inner_iterations"),
    ("method.policy_loss=disco", "method.policy_loss"),
    ("method.dynamic_sampling.enabled=true", "method.dynamic_sampling.enabled"),
])
def test_bad_brpo_config_names_the_field(tiny, tmp_path, override, field):
    with pytest.raises(ConfigError) as info:
        _module(tiny, tmp_path, [override])
    assert info.value.field == field and "->" in str(info.value)
