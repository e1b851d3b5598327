"""Critique-GRPO: the loss (on-policy ratio, off-policy f(p) = p/(p+γ), the sum / (B·L_max) normalization, clip,
KL), the combined group's advantages, the refinement selection, the group layout under the attempt-1 prompt, the
rule critiques, the refinement turn's advantages and config checks on hand values; and short real runs (one with the
refinement turn trained)."""

from __future__ import annotations

import math

import mlflow
import pytest
import torch
from omegaconf import OmegaConf

from workbench.errors import ConfigError
from workbench.methods.self_correction.critique_grpo import (
    CritiqueGRPOModule,
    critique_grpo_loss,
    group_advantages,
    refinement_turn_advantages,
    reshape_prob,
    rule_critiques,
    select_refinements,
    validate_critique_grpo,
)
from workbench.methods.self_correction.protocol import Protocol
from workbench.policy.sampler import Rollout

LOG = math.log


def _case():
    """Row 0 on-policy (A = 1, p = 0.5, 0.25), row 1 a refinement (A = 2, p = 0.9, its 2nd token masked)."""
    logprobs = torch.tensor([[LOG(0.5), LOG(0.25)], [LOG(0.9), LOG(0.1)]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    return logprobs, torch.tensor([1.0, 2.0]), mask, torch.tensor([0.0, 1.0])


def test_reshape_prob_is_p_over_p_plus_gamma():
    out = reshape_prob(torch.log(torch.tensor([0.9, 0.1, 0.3])), 0.1)
    assert torch.allclose(out, torch.tensor([0.9 / 1.0, 0.1 / 0.2, 0.3 / 0.4]))


def test_loss_on_and_off_policy_tokens_and_normalization():
    logprobs, adv, mask, off = _case()
    loss, stats = critique_grpo_loss(logprobs, logprobs.detach(), adv, mask, off, gamma=0.1, max_length=4)
    # on: -1 * ratio(=1) on two tokens = -2; off: -2 * 0.9/(0.9+0.1) = -1.8 on one token; / (B=2 * L_max=4)
    assert loss.item() == pytest.approx(-3.8 / 8)
    loss.backward()
    # d/dlogp: on -A * ratio = -1; off -A * γp/(p+γ)² = -2 * 0.1*0.9/1.0² = -0.18; masked token 0; all / 8
    assert torch.allclose(logprobs.grad, torch.tensor([[-1 / 8, -1 / 8], [-0.18 / 8, 0.0]]))
    assert stats["on_pg_loss"].item() == pytest.approx(-1.0)
    assert stats["off_pg_loss"].item() == pytest.approx(-1.8)
    assert stats["off_prob"].item() == pytest.approx(0.9)
    assert stats["off_reshaped"].item() == pytest.approx(0.9)
    # L_max defaults to the padded width T = 2
    loss_t, _ = critique_grpo_loss(logprobs, logprobs.detach(), adv, mask, off, gamma=0.1)
    assert loss_t.item() == pytest.approx(-3.8 / 4)


def test_loss_negative_advantage_and_gamma():
    logprobs, _, mask, off = _case()
    loss, _ = critique_grpo_loss(logprobs, logprobs.detach(), torch.tensor([-0.5, -1.0]), mask, off, gamma=0.3,
                                 max_length=2)
    # on: +0.5 * 2 tokens = 1; off: +1 * 0.9/1.2 = 0.75; / (2*2)
    assert loss.item() == pytest.approx((1.0 + 0.75) / 4)


def test_off_policy_tokens_ignore_old_logprobs_and_on_policy_ratio_and_clip():
    logprobs, adv, mask, off = _case()
    old = torch.tensor([[LOG(0.25), LOG(0.5)], [LOG(0.5), LOG(0.5)]])  # ratios of row 0: 2, 0.5
    loss, stats = critique_grpo_loss(logprobs, old, adv, mask, off, gamma=0.1, max_length=4)
    # no clip (the paper's loss_remove_clip): -(2 + 0.5) on row 0, the refinement still -1.8 (no ratio)
    assert loss.item() == pytest.approx((-2.5 - 1.8) / 8)
    assert stats["clip_frac"].item() == 0.0
    loss_c, stats_c = critique_grpo_loss(logprobs, old, adv, mask, off, gamma=0.1, max_length=4, clip_eps=(0.2, 0.2))
    # clipped: -min(2, 1.2) = -1.2 and -min(0.5, 0.8) = -0.5; one of the two on-policy tokens clipped
    assert loss_c.item() == pytest.approx((-1.2 - 0.5 - 1.8) / 8)
    assert stats_c["clip_frac"].item() == pytest.approx(0.5)


def test_off_policy_mask_per_token():
    logprobs, adv, mask, _ = _case()
    off = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # only row 0's 2nd token is off-policy: -1 * 0.25/0.35
    loss, _ = critique_grpo_loss(logprobs, logprobs.detach(), adv, mask, off, gamma=0.1, max_length=1)
    assert loss.item() == pytest.approx((-1.0 - 0.25 / 0.35 - 2.0) / 2)


def test_loss_kl_term():
    logprobs, adv, mask, off = _case()
    ref = logprobs.detach().clone()
    ref[0, 0] = LOG(0.25)  # log(ref/pi) = -log 2: k3 = 0.5 + log 2 - 1
    ref[1, 0] = LOG(0.001)  # a refinement token: no KL sample of pi, ignored by penalty and stat
    k3 = 0.5 + LOG(2) - 1
    loss, stats = critique_grpo_loss(logprobs, logprobs.detach(), adv, mask, off, gamma=0.1, max_length=4,
                                     ref_logprobs=ref, beta=0.5)
    assert loss.item() == pytest.approx((-3.8 + 0.5 * k3) / 8)
    assert stats["kl"].item() == pytest.approx(k3 / 2)  # token mean over the 2 on-policy tokens
    loss0, stats0 = critique_grpo_loss(logprobs, logprobs.detach(), adv, mask, off, gamma=0.1, max_length=4,
                                       ref_logprobs=ref, beta=0.0)
    assert loss0.item() == pytest.approx(-3.8 / 8) and stats0["kl"].item() == pytest.approx(k3 / 2)


def test_group_advantages_combined_group_no_std():
    on = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    refine = torch.tensor([[1.0], [0.0], [1.0]])
    adv = group_advantages(on, refine)  # dr_grpo: r - mean of the 4
    assert torch.allclose(adv, torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4, [0.25, 0.25, -0.75, 0.25]]))
    # the refinement completes an all-wrong group: it alone carries a positive advantage
    adv = group_advantages(torch.zeros(1, 3), torch.ones(1, 1))
    assert torch.allclose(adv, torch.tensor([[-0.25, -0.25, -0.25, 0.75]]))
    # grpo (with std) is still available: (r - 0.5) / (std_unbiased + 1e-4), std = sqrt(1/3)
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[1.0]]), "grpo")
    assert torch.allclose(adv, torch.tensor([[0.5, -0.5, -0.5, 0.5]]) / (math.sqrt(1 / 3) + 1e-4))


def test_refinement_turn_advantages_group_each_problems_refinements():
    # problem 0: refinements 1, 1, 0 (mean 2/3); problem 1: all wrong (no signal); r - mean, no std
    adv = refinement_turn_advantages(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    assert torch.allclose(adv, torch.tensor([[1 / 3, 1 / 3, -2 / 3], [0.0, 0.0, 0.0]]))
    std = refinement_turn_advantages(torch.tensor([[1.0, 0.0]]), "grpo")  # the configured estimator is used
    assert std[0, 0] > 0 > std[0, 1] and std[0, 0].item() == pytest.approx(-std[0, 1].item())


def test_select_refinements():
    correct = torch.tensor([[0, 1, 1], [0, 0, 0], [0, 0, 1]])
    rewards = torch.tensor([[0.3, 1.0, 1.0], [0.2, 0.7, 0.7], [0.9, 0.95, 0.5]])
    # first correct one; else the highest reward (first of ties); a correct one beats a higher-reward wrong one
    assert select_refinements(correct, rewards, 1).tolist() == [[1], [1], [2]]
    assert select_refinements(correct, rewards, 2).tolist() == [[1, 2], [1, 2], [2, 1]]


def test_combined_group_puts_refinements_under_the_attempt1_prompt():
    # P = 2 problems, n = 2 first attempts each, k = 1 refinement kept; pad id 0
    first = Rollout(prompt_ids=torch.tensor([[0, 5, 6], [0, 5, 6], [7, 8, 9], [7, 8, 9]]),
                    prompt_mask=torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]]),
                    completion_ids=torch.tensor([[11, 2], [12, 2], [13, 2], [14, 2]]),
                    completion_mask=torch.ones(4, 2, dtype=torch.long), texts=["a", "b", "c", "d"],
                    truncated=torch.zeros(4, dtype=torch.bool))
    second = Rollout(prompt_ids=torch.full((4, 5), 99), prompt_mask=torch.ones(4, 5, dtype=torch.long),  # critique turns
                     completion_ids=torch.tensor([[21, 22, 2], [23, 2, 0], [24, 2, 0], [25, 26, 27]]),
                     completion_mask=torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 1, 1]]),
                     texts=["A", "B", "C", "D"], truncated=torch.tensor([False, False, False, True]))
    r = CritiqueGRPOModule.combined_group(first, second, torch.tensor([[1], [1]]), pad_id=0)
    assert r.texts == ["a", "b", "B", "c", "d", "D"]
    assert r.prompt_ids.tolist() == [[0, 5, 6]] * 3 + [[7, 8, 9]] * 3  # no critique conversation in any row
    assert r.prompt_mask.tolist() == [[0, 1, 1]] * 3 + [[1, 1, 1]] * 3
    assert r.completion_ids.tolist() == [[11, 2, 0], [12, 2, 0], [23, 2, 0], [13, 2, 0], [14, 2, 0], [25, 26, 27]]
    assert r.completion_mask.tolist() == [[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 1]]
    assert r.truncated.tolist() == [False] * 5 + [True]


def test_rule_critiques():
    p = Protocol(feedback="verdict")
    correct = torch.tensor([1.0, 0.0])
    assert rule_critiques(p, correct, ["5", "12"], "simple") == ["Your answer is correct.", "Your answer is incorrect."]
    assert rule_critiques(p, correct, ["5", "12"], "simple_gt") == [
        "Your answer is correct. The correct answer is 5.", "Your answer is incorrect. The correct answer is 12."]


def _method(**over):
    base = dict(critique_type="simple_gt", gamma=0.1, group_size=4, n_refine=1, loss_remove_clip=True, shared_prefix=False)
    return OmegaConf.create({**base, **over})


@pytest.mark.parametrize("over,field", [
    (dict(critique_type="text"), "method.critique_type"),
    (dict(critique_type="gpt"), "method.critique_type"),
    (dict(gamma=0.0), "method.gamma"),
    (dict(gamma=-1), "method.gamma"),
    (dict(n_refine=0), "method.n_refine"),
    (dict(n_refine=4), "method.n_refine"),
    (dict(n_refine=1.5), "method.n_refine"),
    (dict(loss_remove_clip="yes"), "method.loss_remove_clip"),
    (dict(shared_prefix=True), "method.shared_prefix"),
    (dict(refinement_turn_coef=-0.5), "method.refinement_turn_coef"),
    (dict(refinement_turn_coef="on"), "method.refinement_turn_coef"),
])
def test_validate_names_the_field(over, field):
    with pytest.raises(ConfigError) as err:
        validate_critique_grpo(_method(**over))
    assert str(err.value).startswith(f"{field}:")


def test_validate_accepts_the_defaults_and_the_largest_refinement_share():
    validate_critique_grpo(_method())  # would raise on any field it refuses
    validate_critique_grpo(_method(critique_type="simple", group_size=8, n_refine=7))  # G - 1 refinements: allowed
    with pytest.raises(ConfigError) as err:  # one more leaves no on-policy attempt in the group
        validate_critique_grpo(_method(critique_type="simple", group_size=8, n_refine=8))
    assert err.value.field == "method.n_refine"


def test_short_run(fast_cfg):
    from workbench.train import run

    cfg = fast_cfg("critique_grpo", ["task=arithmetic", "method.group_size=4", "method.n_refine=1", "method.beta=0.01",
                                     "method.minibatch_size=6"])
    summary = run(cfg)
    metrics = mlflow.MlflowClient(cfg.logger.tracking_uri).get_run(summary["mlflow_run_id"]).data.metrics
    for key in ("test_before/accuracy_t1", "test_before/accuracy_t2", "test/accuracy_t1", "test/accuracy_t2",
                "test/delta", "train/accuracy_t1", "train/accuracy_t2", "train/refine_success_groups",
                "train/kept_refinement_accuracy", "train/loss", "train/on_pg_loss", "train/off_pg_loss", "train/off_prob",
                "train/kl", "train/advantage_abs", "train/time_generation"):
        assert key in metrics, key
    assert 0.0 <= metrics["train/off_prob"] <= 1.0 and math.isfinite(metrics["train/loss"])
    # the kept refinement is correct whenever any refinement of its group is (one group per problem)
    assert metrics["train/kept_refinement_accuracy"] == pytest.approx(metrics["train/refine_success_groups"])
    assert summary["metrics"]["steps"] == 4


def test_short_run_clipped_two_updates_ground_truth_critique(fast_cfg):
    """The other branches: G = 2 (one attempt + one refinement), simple_gt critiques, the clipped ratio against
    stored old log-probs over two updates per rollout."""
    from workbench.train import run

    cfg = fast_cfg("critique_grpo", ["task=arithmetic", "method.critique_type=simple_gt", "method.loss_remove_clip=false",
                                     "method.inner_iterations=2"])
    assert cfg.method.group_size == 2
    summary = run(cfg)
    metrics = mlflow.MlflowClient(cfg.logger.tracking_uri).get_run(summary["mlflow_run_id"]).data.metrics
    assert 0.0 <= metrics["train/clip_frac"] <= 1.0 and math.isfinite(metrics["train/loss"])
    assert summary["metrics"]["steps"] == 4


def test_short_run_trains_the_refinement_turn_in_its_real_context(fast_cfg, monkeypatch):
    """refinement_turn_coef > 0: a second backward over every sampled refinement, under its (x, y1, critique) prompt,
    with the refinement-turn advantages and the coefficient as weight."""
    from workbench.train import run

    calls = []
    backward = CritiqueGRPOModule._backward_combined

    def spy(self, r, chunks, fn, advantages, mask, off, totals, old=None, ref=None, share=1.0, weight=1.0):
        calls.append((r, advantages.detach().cpu(), off.detach().cpu(), weight,
                      self.tokenizer.decode(r.prompt_ids[0][r.prompt_mask[0].bool()])))
        return backward(self, r, chunks, fn, advantages, mask, off, totals, old, ref, share, weight)

    monkeypatch.setattr(CritiqueGRPOModule, "_backward_combined", spy)
    cfg = fast_cfg("critique_grpo", ["task=arithmetic", "method.group_size=4", "method.n_refine=1",
                                     "method.refinement_turn_coef=0.5"])
    summary = run(cfg)
    assert summary["metrics"]["steps"] == 4 and len(calls) == 8  # the combined group, then the refinement turn
    for (group, _, group_off, w1, group_prompt), (turn2, adv2, off2, w2, turn2_prompt) in zip(calls[::2], calls[1::2]):
        assert (w1, w2) == (1.0, 0.5) and group_off.sum() > 0 and off2.sum() == 0
        assert len(turn2) == len(group) // 4 * 3  # P problems x (G - k) = 3 refinements each
        # the refinement turn's prompts hold the first attempt and the critique; the group's are attempt-1 prompts
        assert "Your answer is" in turn2_prompt and "Your answer is" not in group_prompt
        assert turn2.prompt_ids.shape[1] > group.prompt_ids.shape[1]
        assert torch.allclose(adv2.view(-1, 3).sum(-1), torch.zeros(len(turn2) // 3), atol=1e-6)  # r - group mean
    metrics = mlflow.MlflowClient(cfg.logger.tracking_uri).get_run(summary["mlflow_run_id"]).data.metrics
    for key in ("train/turn2_loss", "train/turn2_on_pg_loss", "train/turn2_advantage_abs"):
        assert key in metrics and math.isfinite(metrics[key]), key
