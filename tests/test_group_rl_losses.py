"""GRPO's pieces against hand-computed values."""

import math

import pytest
import torch

from workbench.methods.group_rl.advantages import ADVANTAGES, grpo_advantage
from workbench.methods.group_rl.losses import aggregate, clipped_surrogate, grpo_loss, kl_estimate
from workbench.methods.sft import sft_loss


def test_grpo_advantage_hand_values():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    adv = grpo_advantage(rewards, eps=0.0 + 1e-4)
    # group 1: mean 0.25, unbiased std sqrt(((.75)^2 + 3 (.25)^2) / 3) = 0.5
    assert adv[0].tolist() == pytest.approx([0.75 / (0.5 + 1e-4), -0.25 / (0.5 + 1e-4), -0.25 / (0.5 + 1e-4), -0.25 / (0.5 + 1e-4)])
    assert adv[1].tolist() == [0.0, 0.0, 0.0, 0.0]  # all equal: no signal
    assert ADVANTAGES["grpo"] is grpo_advantage


def test_clipped_surrogate_hand_values():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.9]]))
    loss, clipped = clipped_surrogate(new, old, torch.tensor([2.0]), eps_low=0.2, eps_high=0.2)
    # A>0: min(rho A, clip(rho) A) -> [1.2*2, 0.5*2, 1.1*2, 0.9*2]
    assert loss[0].tolist() == pytest.approx([-2.4, -1.0, -2.2, -1.8])
    assert clipped[0].tolist() == [1.0, 0.0, 0.0, 0.0]
    loss, clipped = clipped_surrogate(new, old, torch.tensor([-1.0]), eps_low=0.2, eps_high=0.3)
    # A<0: min(-rho, -clip(rho)) -> [-1.5, -0.8, -1.1, -0.9]; loss is the negative
    assert loss[0].tolist() == pytest.approx([1.5, 0.8, 1.1, 0.9])
    assert clipped[0].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_kl_estimators_hand_values():
    logp = torch.log(torch.tensor([[0.5, 0.2]]))
    ref = torch.log(torch.tensor([[0.25, 0.4]]))
    k1 = kl_estimate(logp, ref, "k1")
    k3 = kl_estimate(logp, ref, "k3")
    assert k1[0].tolist() == pytest.approx([math.log(2), math.log(0.5)])
    # k3 = r - log r - 1 with r = pi_ref / pi
    assert k3[0].tolist() == pytest.approx([0.5 - math.log(0.5) - 1, 2 - math.log(2) - 1])
    assert (k3 >= 0).all()
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k9")


def test_aggregation_modes():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(x, mask, "seq_mean_token_mean").item() == pytest.approx((2.0 + 4.0) / 2)
    assert aggregate(x, mask, "token_mean").item() == pytest.approx(10.0 / 4)


def test_grpo_loss_combines_surrogate_and_kl():
    logp = torch.log(torch.tensor([[0.5, 0.2, 0.3], [0.4, 0.6, 0.9]]))
    ref = torch.log(torch.tensor([[0.25, 0.4, 0.3], [0.4, 0.3, 0.9]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -0.5])
    loss, stats = grpo_loss(logp, logp.detach(), adv, mask, ref_logprobs=ref, beta=0.1)
    k3 = kl_estimate(logp, ref, "k3")
    per_token = -adv[:, None] + 0.1 * k3  # ratio is 1 on the first update
    expected = ((per_token * mask).sum(-1) / mask.sum(-1)).mean()
    assert loss.item() == pytest.approx(expected.item())
    assert stats["kl"].item() == pytest.approx(((k3 * mask).sum() / mask.sum()).item())
    # gradient of the first update is -A * grad log pi (per-sequence token mean), plus the KL part
    logp_req = logp.clone().requires_grad_(True)
    loss, _ = grpo_loss(logp_req, logp_req.detach(), adv, mask, beta=0.0)
    loss.backward()
    expected_grad = -(adv[:, None] * mask / mask.sum(-1, keepdim=True)) / 2
    assert torch.allclose(logp_req.grad, expected_grad.float())


def test_sft_loss_is_token_mean_nll():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.1, 0.9, 0.9]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    expected = -(math.log(0.5) + math.log(0.25) + math.log(0.1)) / 3
    assert sft_loss(logp, mask).item() == pytest.approx(expected)


# --------------------------------------------------------------------------------------------------------------
# Advantage estimators added for the group-RL family (every expected number is worked out in the comments).
# --------------------------------------------------------------------------------------------------------------

from workbench.methods.group_rl.advantages import brpo_advantage, semantic_entropy  # noqa: E402
from workbench.methods.group_rl.losses import POLICY_LOSSES, clip_fractions, disco_loss  # noqa: E402


def test_registry_names():
    for name in ["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "seed_grpo"]:
        assert name in ADVANTAGES
    assert set(POLICY_LOSSES) == {"clipped", "disco"}
    assert POLICY_LOSSES["clipped"] is grpo_loss and POLICY_LOSSES["disco"] is disco_loss


def test_grpo_scale_options_and_dr_grpo():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    centered = [[0.75, -0.25, -0.25, -0.25], [0.0, 0.0, 0.0, 0.0]]
    # "none" and Dr. GRPO: r - group mean, no std
    assert ADVANTAGES["dr_grpo"](rewards).tolist() == centered
    assert grpo_advantage(rewards, scale="none").tolist() == centered
    # "batch": one unbiased std over all 8 rewards: mean 5/8, sum of squares 5 (3/8)^2 + 3 (5/8)^2 = 1.875, / 7
    batch_std = math.sqrt(1.875 / 7)
    adv = grpo_advantage(rewards, scale="batch")
    assert adv[0].tolist() == pytest.approx([c / (batch_std + 1e-4) for c in centered[0]])
    assert adv[1].tolist() == [0.0] * 4
    # "group" is the default (the original test's numbers)
    assert grpo_advantage(rewards, scale="group")[0, 0].item() == pytest.approx(0.75 / (0.5 + 1e-4))
    with pytest.raises(ValueError):
        grpo_advantage(rewards, scale="global")


def test_rloo_hand_values():
    # A_i = r_i - mean of the others: [1 - 0, 0 - 1/3, 0 - 1/3, 0 - 1/3]; [2 - 4, 4 - 2]
    assert ADVANTAGES["rloo"](torch.tensor([[1.0, 0.0, 0.0, 0.0]]))[0].tolist() == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3])
    assert ADVANTAGES["rloo"](torch.tensor([[2.0, 4.0]]))[0].tolist() == pytest.approx([-2.0, 2.0])
    with pytest.raises(ValueError):
        ADVANTAGES["rloo"](torch.tensor([[1.0]]))


def test_reinforce_pp_whitens_over_all_valid_tokens():
    # one prompt, two completions of 3 and 1 tokens, rewards 1 and 0 -> token returns [1, 1, 1] and [0]:
    # mean 0.75, unbiased var (3 * 0.25^2 + 0.75^2) / 3 = 0.25, std 0.5 -> 0.5 on the first, -1.5 on the second
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = ADVANTAGES["reinforce_pp"](torch.tensor([[1.0, 0.0]]), mask=mask)
    assert adv.shape == (1, 2, 3)
    assert adv[0].tolist() == [pytest.approx([0.5, 0.5, 0.5], abs=1e-6), pytest.approx([-1.5, 0.0, 0.0], abs=1e-6)]
    # global, not per prompt: the all-correct second group is still above the batch mean (values 1, 0, 1, 1)
    adv = ADVANTAGES["reinforce_pp"](torch.tensor([[1.0, 0.0], [1.0, 1.0]]), mask=torch.ones(4, 1))
    assert adv.reshape(-1).tolist() == pytest.approx([0.5, -1.5, 0.5, 0.5], abs=1e-6)


def test_reinforce_pp_baseline_subtracts_group_mean_first():
    # centred [0.5, -0.5, 0, 0]: mean 0, unbiased var (0.25 + 0.25) / 3 = 1/6 -> +-0.5 / sqrt(1/6) = +-sqrt(1.5)
    adv = ADVANTAGES["reinforce_pp_baseline"](torch.tensor([[1.0, 0.0], [1.0, 1.0]]), mask=torch.ones(4, 1))
    s = math.sqrt(1.5)
    assert adv.reshape(-1).tolist() == pytest.approx([s, -s, 0.0, 0.0], abs=1e-6)


def test_semantic_entropy_hand_values():
    ids = torch.tensor([[0, 1, 1, 2], [5, 5, 5, 5], [0, 1, 2, 3]])
    # p = [1/4, 1/2, 1/4]: -(2 * 1/4 log 1/4 + 1/2 log 1/2) = 1.5 log 2; one cluster: 0; all distinct: log 4
    se = semantic_entropy(ids)
    assert se.tolist() == pytest.approx([1.5 * math.log(2), 0.0, math.log(4)], abs=1e-6)
    # the paper's cluster-mean form: -(1/3)(log 1/4 + log 1/2 + log 1/4) = (5/3) log 2; also 0 and log 4
    assert semantic_entropy(ids, "cluster_mean").tolist() == pytest.approx([5 / 3 * math.log(2), 0.0, math.log(4)], abs=1e-6)


def test_seed_grpo_hand_values():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    ids = torch.tensor([[0, 1, 1, 2]])
    base = [0.75, -0.25, -0.25, -0.25]  # r - mean
    x = 1.5 * math.log(2) / math.log(4)  # SE / SE_max = 0.75
    seed = ADVANTAGES["seed_grpo"]
    assert seed(rewards, cluster_ids=ids)[0].tolist() == pytest.approx([b * (1 - x) for b in base])  # linear, alpha 1
    assert seed(rewards, cluster_ids=ids, f="exponential")[0].tolist() == pytest.approx([b * math.exp(-x) for b in base])
    assert seed(rewards, cluster_ids=ids, f="focal", gamma=2.0)[0].tolist() == pytest.approx([b * 0.25**2 for b in base])
    # alpha 0.5, inverse: 1 / (1 + 0.375)
    assert seed(rewards, cluster_ids=ids, f="inverse", alpha=0.5)[0].tolist() == pytest.approx([b / 1.375 for b in base])
    # all answers agree: SE = 0, factor 1 -> Dr. GRPO's advantage; all distinct: linear factor 1 - 1 = 0
    assert seed(rewards, cluster_ids=torch.zeros(1, 4, dtype=torch.long))[0].tolist() == pytest.approx(base)
    assert seed(rewards, cluster_ids=torch.arange(4)[None])[0].tolist() == pytest.approx([0.0] * 4, abs=1e-7)
    with pytest.raises(ValueError):
        seed(rewards)  # cluster_ids are required


def test_brpo_two_budgets_hand_values():
    # p = [0.5, 0.5]; trajectory 0 scores [0, 1], trajectory 1 scores [1, 1]
    # return_s: g0 [0.5, 0.5], g1 [1.0, 0.5]; V2 (group mean of returns) [0.75, 0.5]
    # V1 at s=1 = (score at budget 0) * p_1: g0 0, g1 0.5; baseline s=0: V2 = 0.75; s=1: (V1 + V2) / 2: g0 0.25, g1 0.5
    adv = brpo_advantage(torch.tensor([[[0.0, 1.0], [1.0, 1.0]]]), torch.tensor([0.5, 0.5]))
    assert adv[0].tolist() == [pytest.approx([-0.25, 0.25]), pytest.approx([0.25, 0.0])]


def test_brpo_three_budgets_discounted_prefix():
    # G = 1 (V2 = 0); prior [2, 3, 5] normalised to [0.2, 0.3, 0.5]; scores [1, 0, 1]
    # return: s0 0.2 + 0.5 = 0.7, s1 0.5, s2 0.5; tail mass: [1, 0.8, 0.5]
    # V1: s1 = 1 * 0.8 = 0.8; s2 = (1 * 1 + 2 * 0) / (1 + 2) * 0.5 = 1/6 (weights 2^k)
    # brpo baseline s * V1 / S: [0, 0.8/3, 2 * (1/6) / 3 = 1/9]
    scores, prior = torch.tensor([[[1.0, 0.0, 1.0]]]), torch.tensor([2.0, 3.0, 5.0])
    assert brpo_advantage(scores, prior)[0, 0].tolist() == pytest.approx([0.7, 0.5 - 0.8 / 3, 0.5 - 1 / 9])
    assert brpo_advantage(scores, prior, "v1only")[0, 0].tolist() == pytest.approx([0.7, 0.5 - 0.8, 0.5 - 1 / 6])
    assert brpo_advantage(scores, prior, "none")[0, 0].tolist() == pytest.approx([0.7, 0.5, 0.5])
    # (P, G, S, A): A summaries per split are averaged first ([1, 1], [0, 0], [0, 2] -> [1, 0, 1])
    four = torch.tensor([[[[1.0, 1.0], [0.0, 0.0], [0.0, 2.0]]]])
    assert torch.allclose(brpo_advantage(four, prior), brpo_advantage(scores, prior))


# --------------------------------------------------------------------------------------------------------------
# Losses: aggregation modes, per-token advantages, clip fractions, GSPO, KL correction, DisCO
# --------------------------------------------------------------------------------------------------------------


def test_more_aggregation_modes():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # Dr. GRPO: (6 + 4) / (B = 2 * L = 5) = 1; verl seq-mean-token-sum: (6 + 4) / 2 = 5
    assert aggregate(x, mask, "seq_mean_token_sum_norm", max_length=5).item() == pytest.approx(1.0)
    assert aggregate(x, mask, "seq_mean_token_sum").item() == pytest.approx(5.0)
    # token_mean over a global token count of 20 (minibatch of a larger batch): 10 / 20
    assert aggregate(x, mask, "token_mean", token_normalizer=20.0).item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        aggregate(x, mask, "seq_mean_token_sum_norm")  # no max_length
    with pytest.raises(ValueError):
        aggregate(x, mask, "sum")


def test_clipped_surrogate_per_token_advantages():
    new, old = torch.log(torch.tensor([[1.5, 0.5]])), torch.zeros(1, 2)
    loss, clipped = clipped_surrogate(new, old, torch.tensor([[2.0, -1.0]]))
    # token 0: min(1.5 * 2, 1.2 * 2) = 2.4; token 1: min(-0.5, -0.8) = -0.8; both on the clipped branch
    assert loss[0].tolist() == pytest.approx([-2.4, 0.8])
    assert clipped[0].tolist() == [1.0, 1.0]


def test_clip_fractions_low_and_high():
    new = torch.log(torch.tensor([[1.5, 0.7], [0.5, 1.5]]))
    old, mask, adv = torch.zeros(2, 2), torch.ones(2, 2), torch.tensor([1.0, -1.0])
    # low: ratio < 0.8 with A < 0 -> only (1, 0); high: ratio > 1.2 with A > 0 -> only (0, 0)
    fr = clip_fractions(torch.exp(new - old), adv, mask, 0.2, 0.2)
    assert (fr["clip_frac_low"].item(), fr["clip_frac_high"].item(), fr["clip_frac_region"].item()) == (0.25, 0.25, 0.5)
    _, stats = grpo_loss(new, old, adv, mask)
    assert stats["clip_frac_low"].item() == 0.25 and stats["clip_frac_high"].item() == 0.25
    # clip_frac (clipped branch active): (0,0) ratio 1.5 A>0 and (1,0) ratio 0.5 A<0 -> 2 of 4 tokens
    assert stats["clip_frac"].item() == 0.5


def test_gspo_sequence_ratio_hand_values():
    # seq 0: token log-ratios [log 2, 0] (+ a padded token) -> s = exp(log 2 / 2) = sqrt 2, A = +1
    # seq 1: token log-ratios log 0.5 on all three tokens -> s = 0.5, A = -1
    old = torch.zeros(2, 3)
    new = torch.tensor([[math.log(2), 0.0, 5.0], [math.log(0.5)] * 3])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([1.0, -1.0])
    # eps 0.2: seq 0 -> -min(sqrt2, 1.2) = -1.2; seq 1 -> -min(-0.5, -0.8) = 0.8; mean -0.2
    loss, stats = grpo_loss(new, old, adv, mask, importance_level="sequence")
    assert loss.item() == pytest.approx(-0.2)
    assert stats["clip_frac_high"].item() == 0.5 and stats["clip_frac_low"].item() == 0.5  # per sequence
    # unclipped (eps 10): loss = -(1/2)(sqrt2 - 0.5); d loss / d logp_{0,t} = -(1/2) * A * s / |o| = -sqrt2 / 4
    new_req = new.clone().requires_grad_(True)
    loss, _ = grpo_loss(new_req, old, adv, mask, eps_low=0.99, eps_high=10.0, importance_level="sequence")
    assert loss.item() == pytest.approx(-(math.sqrt(2) - 0.5) / 2)
    loss.backward()
    assert new_req.grad[0].tolist() == pytest.approx([-math.sqrt(2) / 4, -math.sqrt(2) / 4, 0.0])
    # seq 1: -(1/2) * (-1) * 0.5 / 3 = 1/12 per token
    assert new_req.grad[1].tolist() == pytest.approx([1 / 12] * 3)
    # GSPO-token: same value and, with a per-sequence advantage, the same gradient (GSPO paper)
    tok_req = new.clone().requires_grad_(True)
    loss_tok, _ = grpo_loss(tok_req, old, adv, mask, eps_low=0.99, eps_high=10.0, importance_level="sequence_token")
    loss_tok.backward()
    assert loss_tok.item() == pytest.approx(-(math.sqrt(2) - 0.5) / 2)
    assert torch.allclose(tok_req.grad, new_req.grad)
    with pytest.raises(ValueError):
        grpo_loss(new, old, adv, mask, importance_level="word")


def test_kl_ratio_correction():
    # one token: pi = 0.5, pi_old = 0.25 (ratio 2), pi_ref = 0.25: k3 = 0.5 - log 0.5 - 1; A = 0 so only the KL
    logp, old, ref = (torch.log(torch.tensor([[p]])) for p in (0.5, 0.25, 0.25))
    k3 = 0.5 - math.log(0.5) - 1
    mask, adv = torch.ones(1, 1), torch.zeros(1)
    plain, stats = grpo_loss(logp, old, adv, mask, ref_logprobs=ref, beta=0.1)
    corrected, stats_c = grpo_loss(logp, old, adv, mask, ref_logprobs=ref, beta=0.1, kl_ratio_correction=True)
    assert plain.item() == pytest.approx(0.1 * k3)
    assert corrected.item() == pytest.approx(0.1 * k3 * 2)
    assert stats["kl"].item() == stats_c["kl"].item() == pytest.approx(k3)


def _const_logprobs(values, T=2):
    return torch.tensor(values, dtype=torch.float32)[:, None].repeat(1, T)


def test_disco_log_l_hand_values():
    # group 0 scores (mean log-prob) [-1, -2, -3], labels [1, 0, 0]; group 1 all correct -> skipped, counts in 1/P
    logp = _const_logprobs([-1.0, -2.0, -3.0, -1.0, -1.0, -1.0])
    mask, labels = torch.ones(6, 2), torch.tensor([1, 0, 0, 1, 1, 1])
    # tau = 1: J0 = -1 - log((e^-2 + e^-3) / 2); loss = -J0 / 2 (old = new, so KL_old = 0 and no penalty)
    j0 = -1 - math.log((math.exp(-2) + math.exp(-3)) / 2)
    loss, stats = disco_loss(logp, logp.detach(), None, mask, labels=labels, group_size=3, tau=1.0)
    assert loss.item() == pytest.approx(-j0 / 2)
    assert stats["valid_group_frac"].item() == 0.5 and stats["kl_old"].item() == 0.0
    # tau = 10 (official default): J0 = -1 - 10 log((e^-0.2 + e^-0.3) / 2)
    j0 = -1 - 10 * math.log((math.exp(-0.2) + math.exp(-0.3)) / 2)
    loss, _ = disco_loss(logp, logp.detach(), None, mask, labels=labels, group_size=3)
    assert loss.item() == pytest.approx(-j0 / 2, rel=1e-6)
    # DisCO-b (plain mean of negatives): J0 = -1 - (-2.5) = 1.5
    loss, _ = disco_loss(logp, logp.detach(), None, mask, labels=labels, group_size=3, dro=False)
    assert loss.item() == pytest.approx(-0.75)


def test_disco_gradient_matches_official_surrogate():
    """The official code writes tau * log-sum-exp as tau * S / sg[S]; same gradient as our log-mean-exp."""
    logp = torch.tensor([[-1.0, -0.5], [-2.0, -1.5], [-3.0, -0.1], [-0.3, -0.2]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    labels, tau = torch.tensor([1, 0, 0, 1]), 10.0  # groups of 2: (pos, neg), (neg, pos)
    loss, _ = disco_loss(logp, logp.detach(), None, mask, labels=labels, group_size=2, tau=tau)
    loss.backward()
    ours = logp.grad.clone()

    logp.grad = None
    s = (logp * mask).sum(-1) / mask.sum(-1)  # official: masked mean log-prob
    g = s.view(2, 2)
    pos = labels.view(2, 2) == 1
    neg = ~pos
    m = (g / tau).masked_fill(~neg, float("-inf")).max(-1, keepdim=True).values
    e = torch.exp((g / tau - m.detach()) * neg) * neg
    S = e.sum(-1, keepdim=True)
    surrogate = ((g - tau * S / (S.detach() + torch.finfo(S.dtype).eps)) * pos).sum(-1) / pos.sum(-1)
    (-surrogate.sum() / 2).backward()
    assert torch.allclose(ours, logp.grad, atol=1e-6)


def test_disco_l_ratio_and_kl_constraint():
    # one group of 2, one token each: pi/pi_old = 2 (correct) and 0.5 (wrong); DisCO-b J = 2 - 0.5 = 1.5
    new, old = torch.log(torch.tensor([[2.0], [0.5]])), torch.zeros(2, 1)
    mask, labels = torch.ones(2, 1), torch.tensor([1, 0])
    loss, stats = disco_loss(new, old, None, mask, labels=labels, group_size=2, score="l_ratio", dro=False, beta=0.0)
    assert loss.item() == pytest.approx(-1.5)
    # KL(pi_old || pi) per token: rho - 1 - log rho = [1 - log 2, -0.5 + log 2]; mean 0.25
    assert stats["kl_old"].item() == pytest.approx(0.25)
    # beta 1e3, delta 1e-4: + 1e3 * (0.25 - 1e-4) * 0.25
    loss, stats = disco_loss(new, old, None, mask, labels=labels, group_size=2, score="l_ratio", dro=False)
    assert loss.item() == pytest.approx(-1.5 + 1e3 * (0.25 - 1e-4) * 0.25)
    assert stats["clip_frac"].item() == 1.0  # constraint active
    # the penalty's gradient is that of the squared hinge (beta/2) max(KL - delta, 0)^2
    req = new.clone().requires_grad_(True)
    loss, _ = disco_loss(req, old, None, mask, labels=labels, group_size=2, score="l_ratio", dro=False, tau=1.0)
    loss.backward()
    req2 = new.clone().requires_grad_(True)
    kl = ((torch.exp(req2) - 1 - req2) * mask).sum() / 2
    ratio = torch.exp(req2)
    (-(ratio[0, 0] - ratio[1, 0]) + 1e3 / 2 * torch.clamp(kl - 1e-4, min=0) ** 2).backward()
    assert torch.allclose(req.grad, req2.grad, rtol=1e-5)


def test_disco_without_valid_groups_is_finite():
    logp = torch.zeros(4, 2, requires_grad=True)
    loss, stats = disco_loss(logp, torch.zeros(4, 2), None, torch.ones(4, 2), labels=torch.tensor([1, 1, 0, 0]),
                             group_size=2)
    loss.backward()
    assert loss.item() == 0.0 and stats["valid_group_frac"].item() == 0.0
    assert torch.isfinite(logp.grad).all()
    with pytest.raises(ValueError):
        disco_loss(logp, logp.detach(), None, torch.ones(4, 2))  # no labels / group_size
    with pytest.raises(ValueError):
        disco_loss(logp, logp.detach(), None, torch.ones(4, 2), labels=torch.ones(4), group_size=3)


def test_brpo_matches_a_loop_transcription_of_compute_cot_advantage():
    """Random (P, G, S) against the official triple loop (brpo.py::compute_cot_advantage) written out literally."""
    g = torch.Generator().manual_seed(0)
    P, G, S = 2, 3, 4
    scores = torch.rand(P, G, S, generator=g)
    probs = torch.tensor([1.0, 2.0, 3.0, 4.0])
    probs = probs / probs.sum()
    disc = torch.pow(2.0, torch.arange(S, dtype=torch.float32))
    expected = torch.zeros(P, G, S)
    for b in range(P):
        for i in range(G):
            for s in range(S):
                ret = (scores[b, i, s:] * probs[s:]).sum()
                avg = (scores[b, :, s:] * probs[s:]).sum(dim=-1).mean()
                last = 0.0
                if s > 0:
                    last = (scores[b, i, :s] * disc[:s]).sum() / disc[:s].sum() * probs[s:].sum()
                expected[b, i, s] = ret - (s * last + (S - s) * avg) / S
    assert torch.allclose(brpo_advantage(scores, probs), expected, atol=1e-6)
