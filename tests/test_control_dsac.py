"""DSAC-T: the critic loss (mean term, std term, variance-based scale and its clip), the target sample and its
bound, the twin-distribution target and the running sigma_bar against hand-computed values; a seeded online run
on Pendulum that learns."""

import math

import pytest
import torch

from workbench.errors import ConfigError
from workbench.methods.offline_rl.dsac import (DSACT, bound_target, dsac_critic_loss, gaussian_critic, gradient_scale,
                                               sample_return, twin_targets)
from workbench.tasks import build_task
from workbench.train import run


def huber(x: float, delta: float) -> float:
    return 0.5 * x * x if abs(x) <= delta else delta * (abs(x) - 0.5 * delta)


def test_gaussian_critic_head_is_mean_and_softplus_std():
    q, sigma = gaussian_critic(torch.tensor([[3.0, 0.0], [-1.0, 2.0]]))
    assert q.tolist() == [3.0, -1.0]
    assert sigma.tolist() == pytest.approx([math.log(2.0), math.log(1 + math.exp(2.0))])


def test_gradient_scale_and_its_clip():
    sigma_bar = torch.tensor(1.0)
    w = gradient_scale(sigma_bar, torch.tensor([1.0, 0.1, 20.0]))
    # 1 / (1 + 0.1);  1 / (0.01 + 0.1) = 9.09 (inside);  1 / (400.1) -> clipped up to 0.1
    assert w.tolist() == pytest.approx([1 / 1.1, 1 / 0.11, 0.1])
    w = gradient_scale(torch.tensor(2.0), torch.tensor([0.0, 1.0]))
    assert w.tolist() == pytest.approx([10.0, 4 / 1.1])  # 4 / 0.1 = 40 -> clipped down to 10


def test_target_sample_noise_is_clipped_to_three_std():
    mean, std = torch.tensor([10.0, 10.0, 10.0]), torch.tensor([2.0, 2.0, 2.0])
    z = sample_return(mean, std, torch.tensor([-5.0, 1.0, 4.0]))
    assert z.tolist() == pytest.approx([10 - 3 * 2, 10 + 1 * 2, 10 + 3 * 2])
    torch.manual_seed(0)
    many = sample_return(torch.zeros(100_000), torch.ones(100_000), torch.randn(100_000))
    assert many.abs().max().item() == pytest.approx(3.0)
    assert abs((many.abs() == 3.0).float().mean().item() - 0.0027) < 0.001  # P(|N(0,1)| > 3) lands on the bound


def test_sampled_target_is_bounded_around_the_critics_own_mean():
    q = torch.tensor([[0.0, 10.0, 0.0], [0.0, 10.0, 0.0]])  # [critics, batch]
    y_z = torch.tensor([5.0, 8.0, -4.0])
    sigma_bar = torch.tensor([[1.0], [2.0]])  # bound 3 and 6
    y = bound_target(y_z.unsqueeze(0), q, sigma_bar)
    assert y.tolist() == [[3.0, 8.0, -3.0], [5.0, 8.0, -4.0]]


def test_twin_targets_take_the_distribution_with_the_smaller_mean():
    next_mean = torch.tensor([[1.0, 5.0], [2.0, 3.0]])
    next_sample = torch.tensor([[10.0, 20.0], [30.0, 40.0]])  # critic 0 for the first item, critic 1 for the second
    y_q, y_z = twin_targets(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]), next_mean, next_sample,
                            torch.tensor([-2.0, 4.0]), alpha=0.5, gamma=0.9)
    assert y_q.tolist() == pytest.approx([1 + 0.9 * (1 + 1), 1 + 0.9 * (3 - 2)])
    assert y_z.tolist() == pytest.approx([1 + 0.9 * (10 + 1), 1 + 0.9 * (40 - 2)])
    y_q, y_z = twin_targets(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]), next_mean, next_sample,
                            torch.tensor([-2.0, 4.0]), alpha=0.5, gamma=0.9)
    assert y_q.tolist() == y_z.tolist() == [1.0, 1.0]  # terminals do not bootstrap


# one critic, two items, Huber delta 1 so that the second mean error (3) is in the linear part
Q, SIGMA = [1.0, 3.0], [1.0, 0.5]
Y_Q, Y_B = [0.5, 0.0], [2.0, 3.5]
SIGMA_BAR, DELTA = 2.0, 1.0
W = [4 / (1 + 0.1), 10.0]  # 4 / 1.1 = 3.64;  4 / (0.25 + 0.1) = 11.4 -> clipped to 10


def _loss(q, sigma):
    return dsac_critic_loss(q, sigma, torch.tensor(Y_Q), torch.tensor(Y_B), torch.tensor([SIGMA_BAR]), delta=DELTA)


def test_critic_loss_by_hand():
    mean_terms = [huber(1.0 - 0.5, DELTA), huber(3.0 - 0.0, DELTA)]  # 0.125, 2.5
    assert mean_terms == [0.125, 2.5]
    std_terms = [1.0 * (1.0 - huber(1.0 - 2.0, DELTA)) / 1.1,  # sigma (sigma^2 - H(Q - y_b)) / (sigma + 0.1)
                 0.5 * (0.25 - huber(3.0 - 3.5, DELTA)) / 0.6]
    expected = (W[0] * (mean_terms[0] + std_terms[0]) + W[1] * (mean_terms[1] + std_terms[1])) / 2
    assert _loss(torch.tensor([Q]), torch.tensor([SIGMA])).item() == pytest.approx(expected, rel=1e-6)
    # two critics: the sum of each critic's mean; the second critic sits on its targets with sigma^2 = H = 0
    q2 = torch.tensor([Q, Y_Q])
    s2 = torch.tensor([SIGMA, [0.0, 0.0]])
    loss2 = dsac_critic_loss(q2, s2, torch.tensor(Y_Q), torch.tensor([Y_B, Y_Q]), torch.tensor([SIGMA_BAR, 1.0]),
                             delta=DELTA)
    assert loss2.item() == pytest.approx(expected, rel=1e-6)


def test_critic_loss_default_huber_delta_is_fifty():
    q, sigma = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    loss = dsac_critic_loss(q, sigma, torch.tensor([10.0, 60.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0]))
    w = 1 / 1.1
    expected = w * ((0.5 * 100 + 1 / 1.1) + (50 * (60 - 25) + 1 / 1.1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_critic_gradients_are_variance_scaled():
    q = torch.tensor([Q], requires_grad=True)
    sigma = torch.tensor([SIGMA], requires_grad=True)
    _loss(q, sigma).backward()
    # dL/dQ = w H'(Q - y_q) / B: 0.5 in the quadratic part, delta * sign in the linear part; w is a constant
    assert q.grad[0].tolist() == pytest.approx([W[0] * 0.5 / 2, W[1] * 1.0 / 2], rel=1e-6)
    # dL/dsigma = w (sigma^2 - H(Q - y_b)) / ((sigma + 0.1) B); no gradient through H(sg(Q) - y_b) into Q
    assert sigma.grad[0].tolist() == pytest.approx([W[0] * (1 - 0.5) / 1.1 / 2, W[1] * (0.25 - 0.125) / 0.6 / 2], rel=1e-6)
    # the same example without the scale: the mean gradient is exactly 1/w of the scaled one
    q_plain = torch.tensor([Q], requires_grad=True)
    dsac_critic_loss(q_plain, torch.tensor([SIGMA]), torch.tensor(Y_Q), torch.tensor(Y_B), torch.tensor([SIGMA_BAR]),
                     delta=DELTA, scale_clip=(1.0, 1.0)).backward()
    assert (q.grad / q_plain.grad)[0].tolist() == pytest.approx(W, rel=1e-6)


def _module(fast_cfg, extra=()):
    cfg = fast_cfg("dsac_t", list(extra))
    return DSACT(build_task(cfg.task), cfg.method, cfg.trainer)


def test_sigma_bar_is_a_running_mean_started_by_the_first_batch(fast_cfg):
    module = _module(fast_cfg, ["method.tau_b=0.25"])
    assert module.sigma_bar.tolist() == [-1.0, -1.0]
    module.update_sigma_bar(torch.tensor([[1.0, 3.0], [2.0, 2.0]]))
    assert module.sigma_bar.tolist() == [2.0, 2.0]
    module.update_sigma_bar(torch.tensor([[6.0, 6.0], [0.0, 0.0]]))
    assert module.sigma_bar.tolist() == pytest.approx([0.75 * 2 + 0.25 * 6, 0.75 * 2])
    assert "sigma_bar" in module.state_dict()  # travels with checkpoints


@pytest.mark.parametrize("override,field", [("method.tau_b=0", "method.tau_b"),
                                            ("method.huber_delta=-1", "method.huber_delta"),
                                            ("method.policy_freq=0", "method.policy_freq"),
                                            ("method.scale_clip=[10,0.1]", "method.scale_clip")])
def test_bad_values_name_their_field(fast_cfg, override, field):
    with pytest.raises(ConfigError, match=field):
        _module(fast_cfg, [override])


def test_dsac_t_learns_pendulum_online(fast_cfg):
    """Seeded, 1 thread, ~40 s: 6000 updates (one env step each after 1000 random steps), [64, 64] networks, the
    default algorithm settings (seed 0 gave 108.7 from -3.9; validation 103 at step 5000)."""
    cfg = fast_cfg("dsac_t", ["method.hidden=[64,64]", "method.batch_size=128", "trainer.max_steps=6000",
                              "method.val_check_interval=1000", "method.log_every=500", "task.eval_episodes=5", "seed=0"])
    m = run(cfg)["metrics"]
    assert m["test_before/normalized_score"] < 30
    assert m["val/best_normalized_score"] > 60 and m["test/normalized_score"] > m["test_before/normalized_score"] + 50
