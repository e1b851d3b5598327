"""BC, TD3+BC and SAC losses against hand-computed values on small batches."""

import math

import pytest
import torch

from workbench.methods.offline_rl.bc import bc_discrete_loss, bc_loss
from workbench.methods.offline_rl.networks import TanhGaussianActor, soft_update
from workbench.methods.offline_rl.sac import sac_actor_loss, soft_q_target, temperature_loss
from workbench.methods.offline_rl.td3_bc import critic_loss, smoothed_target_action, td3_bc_actor_loss, td3_target


def test_bc_losses():
    pred = torch.tensor([[0.5, -0.5], [0.0, 1.0]])
    act = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert bc_loss(pred, act).item() == pytest.approx((0.25 + 0.25 + 1.0 + 0.0) / 4)
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    expected = (-(2 - math.log(math.exp(2) + 1)) + math.log(2)) / 2
    assert bc_discrete_loss(logits, torch.tensor([0, 1])).item() == pytest.approx(expected, rel=1e-6)


def test_td3_target_takes_min_and_stops_at_terminals():
    next_q = torch.tensor([[1.0, 5.0], [2.0, 3.0]])  # [critics, batch]
    y = td3_target(torch.tensor([1.0, -1.0]), torch.tensor([0.0, 1.0]), next_q, gamma=0.9)
    assert y.tolist() == pytest.approx([1.0 + 0.9 * 1.0, -1.0])


def test_critic_loss_sums_critics_of_mean_squared_errors():
    q = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([0.0, 1.0])
    assert critic_loss(q, target).item() == pytest.approx((1 + 1) / 2 + (0 + 1) / 2)


def test_td3_bc_actor_loss():
    q_pi = torch.tensor([2.0, -4.0])
    pi = torch.tensor([[0.5], [0.0]])
    a = torch.tensor([[0.0], [1.0]])
    lam = 2.5 / ((2 + 4) / 2)
    expected = -lam * (2 - 4) / 2 + (0.25 + 1.0) / 2
    assert td3_bc_actor_loss(q_pi, pi, a, alpha=2.5).item() == pytest.approx(expected)
    # lambda is a constant: the Q gradient is -lambda / B per element, no gradient through |Q|
    q = q_pi.clone().requires_grad_(True)
    td3_bc_actor_loss(q, pi, a, alpha=2.5).backward()
    assert q.grad.tolist() == pytest.approx([-lam / 2, -lam / 2])


def test_target_policy_smoothing_clips_noise_and_action():
    torch.manual_seed(0)
    actor = lambda obs: torch.full((obs.shape[0], 1), 0.95)  # noqa: E731
    a = smoothed_target_action(actor, torch.zeros(1000, 3), policy_noise=10.0, noise_clip=0.5)
    assert a.min().item() == pytest.approx(0.45) and a.max().item() == pytest.approx(1.0)


def test_sac_losses():
    next_q = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    y = soft_q_target(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 0.0]), next_q, torch.tensor([-1.0, 2.0]), alpha=0.2, gamma=0.5)
    assert y.tolist() == pytest.approx([0.5 + 0.5 * (1 + 0.2), 0.5 + 0.5 * (0 - 0.4)])
    q_pi = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    assert sac_actor_loss(q_pi, torch.tensor([-1.0, 2.0]), 0.2).item() == pytest.approx(((-0.2 - 1) + (0.4 - 0)) / 2)
    log_alpha = torch.tensor(math.log(0.5), requires_grad=True)
    loss = temperature_loss(log_alpha, torch.tensor([-1.0, -3.0]), target_entropy=-1.0)
    assert loss.item() == pytest.approx(-math.log(0.5) * ((-2) + (-4)) / 2)
    loss.backward()
    assert log_alpha.grad.item() == pytest.approx(3.0)  # entropy above target -> lower alpha


def test_tanh_gaussian_log_prob_matches_change_of_variables():
    torch.manual_seed(0)
    actor = TanhGaussianActor(3, 2, [8])
    obs = torch.randn(5, 3)
    a, logp = actor.sample(obs)
    mu, log_std = actor._params(obs)
    u = torch.atanh(a)
    normal = torch.distributions.Normal(mu, log_std.exp()).log_prob(u).sum(-1)
    expected = normal - torch.log(1 - a ** 2).sum(-1)
    assert torch.allclose(logp, expected, atol=1e-3)
    assert torch.allclose(actor.log_prob(obs, a), logp, atol=1e-3)


def test_soft_update():
    src, tgt = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    src.weight.data.fill_(1.0)
    tgt.weight.data.fill_(0.0)
    soft_update(tgt, src, 0.1)
    assert tgt.weight.item() == pytest.approx(0.1)
