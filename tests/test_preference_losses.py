"""Offline preference losses (workbench/methods/preference/losses.py) against values computed by hand.

Every expected number below is written out from the loss's formula with ``math`` on the same small inputs, never
by calling the function under test. One fixture is shared by most tests: two pairs with

    chosen      = [-1.0, -2.0]     ref_chosen   = [-1.5, -2.0]    -> h(y_w) = [ 0.5,  0.0]
    rejected    = [-3.0, -1.5]     ref_rejected = [-2.0, -1.0]    -> h(y_l) = [-1.0, -0.5]
    chosen_tokens = [2, 4]         rejected_tokens = [5, 1]       -> Delta  = [ 1.5,  0.5]

so mean log-probs are chosen [-0.5, -0.5] and rejected [-0.6, -1.5].
"""

from __future__ import annotations

import math

import pytest
import torch

from workbench.methods.preference.losses import (PAIR_LOSSES, REFERENCE_FREE, PairLogps, cal_dpo_loss, combined_loss,
                                                  cpl_loss, dpo_loss, fdpg_loss, hinge_loss, implicit_rewards,
                                                  ipo_loss, kto_kl_baseline, kto_loss, orpo_odds_ratio_loss,
                                                  robust_dpo_loss, sft_term, simpo_loss)

H_W = [0.5, 0.0]
H_L = [-1.0, -0.5]
DELTA = [1.5, 0.5]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def neg_log_sigmoid(x: float) -> float:  # -log sigmoid(x) = log(1 + e^-x)
    return softplus(-x)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def pairs(**kw) -> PairLogps:
    values = dict(chosen=[-1.0, -2.0], rejected=[-3.0, -1.5], chosen_tokens=[2, 4], rejected_tokens=[5, 1],
                  ref_chosen=[-1.5, -2.0], ref_rejected=[-2.0, -1.0])
    values.update(kw)
    return PairLogps(**{k: None if v is None else torch.tensor(v, dtype=torch.float64 if "tokens" not in k else torch.long)
                        for k, v in values.items()})


def approx(values, **kw):
    return pytest.approx(values, rel=1e-12, abs=1e-12, **kw)


# ---- the DPO family ------------------------------------------------------------------------------------------
def test_pair_logps_ratios_margin_and_means():
    lp = pairs()
    chosen, rejected = lp.logratios()
    assert chosen.tolist() == approx(H_W) and rejected.tolist() == approx(H_L)
    assert lp.margin().tolist() == approx(DELTA)
    chosen_mean, rejected_mean = lp.mean_logps()
    assert chosen_mean.tolist() == approx([-0.5, -0.5]) and rejected_mean.tolist() == approx([-0.6, -1.5])
    with pytest.raises(ValueError, match="reference"):
        pairs(ref_chosen=None).margin()


def test_dpo_sigmoid_hand_values():
    beta = 0.5  # beta * Delta = [0.75, 0.25]
    expected = [math.log1p(math.exp(-0.75)), math.log1p(math.exp(-0.25))]
    assert PAIR_LOSSES["sigmoid"](pairs(), beta=beta).tolist() == approx(expected)
    assert dpo_loss(torch.tensor(DELTA, dtype=torch.float64), beta).tolist() == approx(expected)
    # no preference yet (policy == reference): log 2, the chance-level loss
    assert dpo_loss(torch.zeros(3), 0.1).tolist() == pytest.approx([math.log(2)] * 3)


def test_dpo_gradient_is_minus_beta_sigmoid_of_minus_beta_delta():
    """d loss / d log pi(y_w) = -beta sigmoid(-beta Delta); d loss / d log pi(y_l) = +beta sigmoid(-beta Delta)."""
    beta = 0.5
    lp = pairs()
    lp.chosen.requires_grad_(True)
    lp.rejected.requires_grad_(True)
    PAIR_LOSSES["sigmoid"](lp, beta=beta).sum().backward()
    weights = [beta * sigmoid(-beta * d) for d in DELTA]  # [0.5 sigma(-0.75), 0.5 sigma(-0.25)]
    assert lp.chosen.grad.tolist() == approx([-w for w in weights])
    assert lp.rejected.grad.tolist() == approx(weights)
    # the weight is larger where the model is wrong-er: the pair with the smaller margin gets the larger push
    assert weights[1] > weights[0]


def test_cdpo_label_smoothing_hand_values():
    beta, eps = 0.5, 0.1
    expected = [0.9 * neg_log_sigmoid(0.75) + 0.1 * neg_log_sigmoid(-0.75),
                0.9 * neg_log_sigmoid(0.25) + 0.1 * neg_log_sigmoid(-0.25)]
    assert PAIR_LOSSES["sigmoid"](pairs(), beta=beta, label_smoothing=eps).tolist() == approx(expected)
    # the conservative target: the loss is no longer minimized at Delta -> inf but at sigmoid(beta Delta) = 1 - eps
    delta = torch.tensor([math.log(9.0) / beta], dtype=torch.float64, requires_grad=True)  # sigmoid(beta Delta) = 0.9
    dpo_loss(delta, beta, eps).sum().backward()
    assert delta.grad.item() == pytest.approx(0.0, abs=1e-12)


def test_robust_dpo_hand_values():
    beta, eps = 0.5, 0.2
    expected = [(0.8 * neg_log_sigmoid(0.75) - 0.2 * neg_log_sigmoid(-0.75)) / 0.6,
                (0.8 * neg_log_sigmoid(0.25) - 0.2 * neg_log_sigmoid(-0.25)) / 0.6]
    assert PAIR_LOSSES["robust"](pairs(), beta=beta, label_smoothing=eps).tolist() == approx(expected)
    # eps = 0 is plain DPO
    assert PAIR_LOSSES["robust"](pairs(), beta=beta).tolist() == approx([neg_log_sigmoid(0.75), neg_log_sigmoid(0.25)])
    for bad in (0.5, 0.7, -0.1):
        with pytest.raises(ValueError, match="flip_rate"):
            robust_dpo_loss(torch.tensor(DELTA), beta, bad)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.25, 0.4])
def test_robust_dpo_is_unbiased_under_label_flips(eps):
    """If the observed label is flipped with probability eps (the observed margin is -Delta), the expected rDPO loss
    over the flip is the clean-label DPO loss: (1-eps) l_r(Delta) + eps l_r(-Delta) = -log sigmoid(beta Delta)."""
    beta = 0.7
    delta = torch.linspace(-4, 4, 17, dtype=torch.float64)
    expected_over_flips = (1 - eps) * robust_dpo_loss(delta, beta, eps) + eps * robust_dpo_loss(-delta, beta, eps)
    clean = [neg_log_sigmoid(beta * d) for d in delta.tolist()]
    assert expected_over_flips.tolist() == pytest.approx(clean, rel=1e-10, abs=1e-12)
    # plain DPO on noisy labels is biased (for eps > 0): its expectation is cDPO, not the clean loss
    if eps > 0:
        noisy = (1 - eps) * dpo_loss(delta, beta) + eps * dpo_loss(-delta, beta)
        assert not torch.allclose(noisy, torch.tensor(clean, dtype=torch.float64))


def test_ipo_length_normalized_and_summed():
    # normalized (TRL's form): h_w / |y_w| = [0.25, 0.0], h_l / |y_l| = [-0.2, -0.5]; 1 / (2 beta) = 1 at beta 0.5
    expected = [(0.25 + 0.2 - 1) ** 2, (0.0 + 0.5 - 1) ** 2]  # [0.3025, 0.25]
    assert PAIR_LOSSES["ipo"](pairs(), beta=0.5).tolist() == approx(expected)
    assert PAIR_LOSSES["ipo"](pairs(), beta=0.5, ipo_length_normalize=True).tolist() == approx([0.3025, 0.25])
    # summed (the paper's Eq. 17): Delta = [1.5, 0.5]; 1 / (2 beta) = 2 at beta 0.25
    assert PAIR_LOSSES["ipo"](pairs(), beta=0.25, ipo_length_normalize=False).tolist() == approx([0.25, 2.25])
    assert ipo_loss(torch.tensor(H_W), torch.tensor(H_L), 0.25).tolist() == pytest.approx([0.25, 2.25])


def test_hinge_hand_values():
    assert PAIR_LOSSES["hinge"](pairs(), beta=0.5).tolist() == approx([1 - 0.75, 1 - 0.25])
    # a margin past 1/beta costs nothing and gives no gradient
    delta = torch.tensor(DELTA, dtype=torch.float64, requires_grad=True)
    loss = hinge_loss(delta, 1.0)
    assert loss.tolist() == approx([0.0, 0.5])
    loss.sum().backward()
    assert delta.grad.tolist() == approx([0.0, -1.0])


def test_simpo_hand_values_gamma_is_beta_times_ratio():
    # beta 2, gamma_beta_ratio 0.5 -> gamma 1; logits = 2 (mean_w - mean_l) - 1 = [2 * 0.1 - 1, 2 * 1.0 - 1] = [-0.8, 1.0]
    lp = pairs(ref_chosen=None, ref_rejected=None)  # reference-free
    assert PAIR_LOSSES["simpo"](lp, beta=2.0, gamma_beta_ratio=0.5).tolist() == approx([neg_log_sigmoid(-0.8), neg_log_sigmoid(1.0)])
    # gamma_beta_ratio 0.25 at beta 4 -> gamma 1 again, logits = 4 (mean_w - mean_l) - 1 = [-0.6, 3.0]
    assert PAIR_LOSSES["simpo"](lp, beta=4.0, gamma_beta_ratio=0.25).tolist() == approx([neg_log_sigmoid(-0.6), neg_log_sigmoid(3.0)])
    # label smoothing as in cDPO
    assert PAIR_LOSSES["simpo"](lp, beta=2.0, gamma_beta_ratio=0.5, label_smoothing=0.1).tolist() == approx(
        [0.9 * neg_log_sigmoid(-0.8) + 0.1 * neg_log_sigmoid(0.8), 0.9 * neg_log_sigmoid(1.0) + 0.1 * neg_log_sigmoid(-1.0)])
    assert simpo_loss(torch.tensor([-0.5]), torch.tensor([-0.6]), 2.0, 1.0).item() == pytest.approx(neg_log_sigmoid(-0.8))
    assert "simpo" in REFERENCE_FREE


def test_orpo_odds_ratio_hand_values():
    # log odds(y) = m - log(1 - e^m) for mean log-prob m; loss = -log sigmoid(log odds(y_w) - log odds(y_l))
    def log_odds(m):
        return m - math.log(1 - math.exp(m))

    expected = [neg_log_sigmoid(log_odds(-0.5) - log_odds(-0.6)), neg_log_sigmoid(log_odds(-0.5) - log_odds(-1.5))]
    lp = pairs(ref_chosen=None, ref_rejected=None)
    assert PAIR_LOSSES["orpo"](lp).tolist() == approx(expected)
    # equal likelihoods: no preference, log 2
    assert orpo_odds_ratio_loss(torch.tensor([-0.3]), torch.tensor([-0.3])).item() == pytest.approx(math.log(2))
    # a (near) certain chosen completion stays finite thanks to the clamp
    assert torch.isfinite(orpo_odds_ratio_loss(torch.tensor([0.0]), torch.tensor([-1.0]))).all()


def test_cal_dpo_hand_values():
    # beta 0.5 -> calibration targets +-1/(2 beta) = +-1; no beta inside the sigmoid
    expected = [neg_log_sigmoid(1.5) + 0.5 * ((0.5 - 1) ** 2 + (-1.0 + 1) ** 2),   # + 0.125
                neg_log_sigmoid(0.5) + 0.5 * ((0.0 - 1) ** 2 + (-0.5 + 1) ** 2)]   # + 0.625
    assert PAIR_LOSSES["cal_dpo"](pairs(), beta=0.5).tolist() == approx(expected)
    assert cal_dpo_loss(torch.tensor(H_W), torch.tensor(H_L), 0.5).tolist() == pytest.approx(expected)


def test_cpl_hand_values_and_conservative_bias():
    # S = alpha * sum log pi; loss = softplus(lambda S- - S+)
    alpha, lam = 0.1, 0.5
    expected = [softplus(lam * alpha * -3.0 - alpha * -1.0),   # softplus(-0.05)
                softplus(lam * alpha * -1.5 - alpha * -2.0)]   # softplus(0.125)
    lp = pairs(ref_chosen=None, ref_rejected=None)
    assert PAIR_LOSSES["cpl"](lp, cpl_alpha=alpha, cpl_conservative_bias=lam).tolist() == approx(expected)
    # lambda = 1 is the unbiased Bradley-Terry loss on alpha * log-probs
    assert cpl_loss(lp.chosen, lp.rejected, alpha, 1.0).tolist() == approx(
        [neg_log_sigmoid(alpha * (-1.0 + 3.0)), neg_log_sigmoid(alpha * (-2.0 + 1.5))])
    # the bias: with lambda < 1 the push down on the rejected completion is lambda times the push up on the chosen one
    chosen = torch.tensor([-1.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-3.0], dtype=torch.float64, requires_grad=True)
    cpl_loss(chosen, rejected, alpha, lam).sum().backward()
    s = sigmoid(lam * alpha * -3.0 - alpha * -1.0)
    assert chosen.grad.item() == pytest.approx(-alpha * s) and rejected.grad.item() == pytest.approx(lam * alpha * s)


def test_sft_term_batch_mean_is_token_mean_nll():
    # per-token log-probs of the two chosen completions (2 and 4 tokens)
    token_logps = [[math.log(0.5), math.log(0.25)], [math.log(0.9), math.log(0.1), math.log(0.5), math.log(0.8)]]
    chosen = [sum(t) for t in token_logps]
    lp = pairs(chosen=chosen)
    per_example = PAIR_LOSSES["sft"](lp)
    token_mean_nll = -(sum(token_logps[0]) + sum(token_logps[1])) / 6
    assert per_example.mean().item() == pytest.approx(token_mean_nll, rel=1e-12)
    # spread over examples as -log pi(y_w) * B / sum |y_w| (not a per-example mean)
    assert per_example.tolist() == approx([-chosen[0] * 2 / 6, -chosen[1] * 2 / 6])
    assert sft_term(torch.tensor([-1.0, -2.0]), torch.tensor([2, 4])).tolist() == pytest.approx([1 / 3, 2 / 3])


def test_combined_loss_weights_and_parts():
    beta = 0.5
    lp = pairs()
    total, parts = combined_loss(lp, ["sigmoid", "sft"], [1.0, 0.2], {"beta": beta})
    dpo_mean = (neg_log_sigmoid(0.75) + neg_log_sigmoid(0.25)) / 2
    sft_mean = (1.0 + 2.0) / 6  # -(sum log pi(y_w)) / sum |y_w|
    assert total.item() == pytest.approx(dpo_mean + 0.2 * sft_mean, rel=1e-12)
    assert parts["sigmoid"].item() == pytest.approx(dpo_mean) and parts["sft"].item() == pytest.approx(sft_mean)
    assert not parts["sigmoid"].requires_grad
    # one loss, weight 1: just its mean; the weights must match the names
    total, parts = combined_loss(lp, ["hinge"], [1.0], {"beta": beta})
    assert total.item() == pytest.approx((0.25 + 0.75) / 2) and list(parts) == ["hinge"]
    with pytest.raises(ValueError):
        combined_loss(lp, ["sigmoid", "sft"], [1.0], {"beta": beta})
    # loss-specific parameters reach their loss and are ignored by the others
    total, _ = combined_loss(pairs(), ["ipo", "cpl"], [0.5, 2.0], {"beta": 0.5, "cpl_alpha": 0.1, "cpl_conservative_bias": 0.5})
    assert total.item() == pytest.approx(0.5 * (0.3025 + 0.25) / 2 + 2.0 * (softplus(-0.05) + softplus(0.125)) / 2)


@pytest.mark.parametrize("loss_types, expected", [
    (["sigmoid"], ([0.25, 0.0], [-0.5, -0.25])),            # beta * h
    (["ipo", "sft"], ([0.25, 0.0], [-0.5, -0.25])),         # any reference-based term: beta * h
    (["simpo"], ([-0.25, -0.25], [-0.3, -0.75])),           # beta * mean log-prob
    (["orpo", "sft"], ([-0.25, -0.25], [-0.3, -0.75])),
    (["cpl"], ([-0.5, -1.0], [-1.5, -0.75])),               # beta * summed log-prob
])
def test_implicit_rewards_per_loss_family(loss_types, expected):
    chosen, rejected = implicit_rewards(pairs(), loss_types, beta=0.5)
    assert chosen.tolist() == approx(expected[0]) and rejected.tolist() == approx(expected[1])


def test_implicit_rewards_of_reference_free_losses_need_no_reference():
    chosen, rejected = implicit_rewards(pairs(ref_chosen=None, ref_rejected=None), ["simpo"], beta=2.0)
    assert chosen.tolist() == approx([-1.0, -1.0]) and rejected.tolist() == approx([-1.2, -3.0])


# ---- KTO ---------------------------------------------------------------------------------------------------------
def test_kto_desirable_and_undesirable_hand_values():
    h = [1.0, -0.5, 0.2, -2.0]
    logps = torch.tensor([-2.0, -3.5, -1.8, -6.0], dtype=torch.float64)
    ref = logps - torch.tensor(h, dtype=torch.float64)
    desirable = torch.tensor([1, 0, 1, 0])
    beta, z0, w_d, w_u = 0.5, torch.tensor(0.3, dtype=torch.float64), 1.0, 1.5
    expected = [w_d * (1 - sigmoid(0.5 * (1.0 - 0.3))),      # desirable: 1 - sigma(beta (h - z0))
                w_u * (1 - sigmoid(0.5 * (0.3 + 0.5))),      # undesirable: 1 - sigma(beta (z0 - h))
                w_d * (1 - sigmoid(0.5 * (0.2 - 0.3))),
                w_u * (1 - sigmoid(0.5 * (0.3 + 2.0)))]
    losses = kto_loss(logps, ref, desirable, z0, beta, w_d, w_u)
    assert losses.tolist() == approx(expected)
    # the gradient moves desirable log-probs up and undesirable ones down
    logps.requires_grad_(True)
    kto_loss(logps, ref, desirable, z0, beta, w_d, w_u).sum().backward()
    assert logps.grad[0] < 0 and logps.grad[2] < 0 and logps.grad[1] > 0 and logps.grad[3] > 0
    s = sigmoid(0.5 * 0.7)
    assert logps.grad[0].item() == pytest.approx(-beta * s * (1 - s))


def test_kto_reference_point_is_clamped_at_zero_and_detached():
    kl_logps = torch.tensor([-2.0, -3.0, -1.0], dtype=torch.float64, requires_grad=True)
    # mean(log pi - log pi_ref) = mean([0.5, -0.25, 0.3]) = 0.55 / 3
    z0 = kto_kl_baseline(kl_logps, kl_logps.detach() - torch.tensor([0.5, -0.25, 0.3], dtype=torch.float64))
    assert z0.item() == pytest.approx(0.55 / 3) and not z0.requires_grad
    # a negative estimate (the sampled KL cannot be negative) is clamped to 0
    z0 = kto_kl_baseline(kl_logps, kl_logps.detach() + 1.0)
    assert z0.item() == 0.0 and not z0.requires_grad


# ---- f-DPG -------------------------------------------------------------------------------------------------------
def _f(divergence: str, t: torch.Tensor) -> torch.Tensor:
    """The generator f of D_f(pi || p) = sum_y p(y) f(pi(y) / p(y)), written out independently of losses.py."""
    if divergence == "kl":            # sum p (-log t) = KL(p || pi)
        return -torch.log(t)
    if divergence == "reverse_kl":    # sum p t log t = KL(pi || p)
        return t * torch.log(t)
    if divergence == "js":            # 2 JS(pi, p) = KL(pi || m) + KL(p || m), m = (pi + p) / 2
        return t * torch.log(t) - (1 + t) * torch.log((1 + t) / 2)
    if divergence == "tv":            # TV(pi, p) = 1/2 sum |pi - p|
        return 0.5 * torch.abs(t - 1)
    raise AssertionError(divergence)


def _toy(seed: int = 0, k: int = 6):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(k, generator=g, dtype=torch.float64)
    ref = torch.softmax(torch.randn(k, generator=g, dtype=torch.float64), 0)
    rewards = torch.randn(k, generator=g, dtype=torch.float64)
    beta = 0.7
    target = ref * torch.exp(rewards / beta)
    return theta, ref, rewards, beta, target / target.sum(), target.sum()


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "js", "tv"])
@pytest.mark.parametrize("baseline", [0.0, 0.37])
def test_fdpg_gradient_is_the_exact_f_divergence_gradient(divergence, baseline):
    """Exact enumeration: every outcome once, uniform proposal q = 1/K, so the batch mean is the exact E_q and the
    importance-sampled Z is exact. The surrogate's gradient must then equal grad_theta D_f(pi_theta || p)."""
    theta, ref, rewards, beta, p, z = _toy()
    k = len(theta)
    theta = theta.clone().requires_grad_(True)
    logps = torch.log_softmax(theta, 0)  # every outcome y = 0..K-1 once
    loss, stats = fdpg_loss(logps, torch.full((k,), -math.log(k), dtype=torch.float64), torch.log(ref), rewards,
                            beta, divergence, baseline=baseline)
    (grad,) = torch.autograd.grad(loss, theta)
    assert stats["log_z"].item() == pytest.approx(math.log(z.item()), rel=1e-12)

    theta_exact = theta.detach().clone().requires_grad_(True)
    pi = torch.softmax(theta_exact, 0)
    divergence_value = (p * _f(divergence, pi / p)).sum()
    (expected,) = torch.autograd.grad(divergence_value, theta_exact)
    assert torch.allclose(grad, expected, atol=1e-12, rtol=1e-10), (grad, expected)
    if divergence == "kl":  # closed form: grad_theta KL(p || softmax(theta)) = pi - p
        assert torch.allclose(grad, (pi - p).detach(), atol=1e-12)
    # descending the surrogate lowers the divergence
    with torch.no_grad():
        stepped = torch.softmax(theta.detach() - 0.05 * grad, 0)
        assert (p * _f(divergence, stepped / p)).sum() < divergence_value


@pytest.mark.parametrize("divergence", ["kl", "js"])
def test_fdpg_importance_sampled_gradient_from_another_proposal(divergence):
    """Samples from the reference (q = pi_ref != pi_theta), Z estimated on the batch: the gradient converges to the
    exact one (Monte Carlo, 400k samples)."""
    theta, ref, rewards, beta, p, _ = _toy(seed=1, k=5)
    n = 400_000
    idx = torch.multinomial(ref, n, replacement=True, generator=torch.Generator().manual_seed(3))
    theta_mc = theta.clone().requires_grad_(True)
    logps = torch.log_softmax(theta_mc, 0)[idx]
    loss, _ = fdpg_loss(logps, torch.log(ref)[idx], torch.log(ref)[idx], rewards[idx], beta, divergence,
                        baseline=0.1)
    (grad,) = torch.autograd.grad(loss, theta_mc)
    theta_exact = theta.clone().requires_grad_(True)
    pi = torch.softmax(theta_exact, 0)
    (expected,) = torch.autograd.grad((p * _f(divergence, pi / p)).sum(), theta_exact)
    assert torch.allclose(grad, expected, atol=3e-3), (grad, expected)  # gradients ~0.1, MC error ~7e-4


def test_fdpg_rejects_unknown_divergence():
    with pytest.raises(ValueError, match="unknown divergence"):
        fdpg_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2), 1.0, "hellinger")
