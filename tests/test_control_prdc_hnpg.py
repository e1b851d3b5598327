"""PRDC's dataset-constraint target and actor loss, HNPG's conjugate gradient, hybrid critic loss, KL step size and
returns, against hand-computed values; short seeded learning runs of both."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from workbench.errors import ConfigError
from workbench.methods.offline_rl.hnpg import (conjugate_gradient, fitted_q_target, gaussian_kl, hybrid_critic_loss,
                                              kl_step_scale, returns_and_advantages, surrogate_loss)
from workbench.methods.offline_rl.prdc import dataset_keys, nearest_dataset_actions, prdc_actor_loss
from workbench.train import run

# ---- PRDC ----------------------------------------------------------------------------------------------------

# 4 dataset pairs (1-d state, 1-d action): two near state 0 with different actions, two near state 1
OBS = np.array([[0.0], [0.1], [1.0], [1.2]])
ACT = np.array([[0.9], [-0.9], [0.5], [-0.5]])


def _targets(obs, pi, beta, k=1):
    tree = cKDTree(dataset_keys(OBS, ACT, beta))
    return nearest_dataset_actions(tree, ACT.astype(np.float32), torch.tensor(obs, dtype=torch.float32),
                                   torch.tensor(pi, dtype=torch.float32), beta, k).flatten().tolist()


def test_dataset_keys_scale_states_only():
    keys = dataset_keys(OBS, ACT, beta=2.0)
    assert keys.tolist() == [[0.0, 0.9], [0.2, -0.9], [2.0, 0.5], [2.4, -0.5]]


def test_prdc_nearest_pair_by_hand():
    # query s = 0.05, pi = -0.8 with beta = 1: squared distances to the 4 points
    # (0.05^2 + 1.7^2, 0.05^2 + 0.1^2, 0.95^2 + 1.3^2, 1.15^2 + 0.3^2) -> point 1 (action -0.9)
    assert _targets([[0.05]], [[-0.8]], beta=1.0) == pytest.approx([-0.9])
    # k = 2: the second nearest; point 3 (1.15^2 + 0.3^2 = 1.4125) beats point 0 (2.8925) and point 2 (2.5925)
    assert _targets([[0.05]], [[-0.8]], beta=1.0, k=2) == pytest.approx([-0.5])


def test_prdc_beta_changes_the_nearest_pair():
    # s = 0.6, pi = 0.6. beta = 1: d^2 to point 0 = 0.36 + 0.09 = 0.45, point 2 = 0.16 + 0.01 = 0.17 -> 0.5.
    assert _targets([[0.6]], [[0.6]], beta=1.0) == pytest.approx([0.5])
    # s = 0.3, pi = 0.85, beta = 1: point 0: 0.09 + 0.0025 = 0.0925, point 2: 0.49 + 0.1225 = 0.6125 -> 0.9
    assert _targets([[0.3]], [[0.85]], beta=1.0) == pytest.approx([0.9])
    # s = 0.3, pi = 0.45: beta = 1 -> point 0: 0.09 + 0.2025 = 0.2925, point 2: 0.49 + 0.0025 = 0.4925 -> 0.9;
    # beta = 0.1 -> point 0: 0.0009 + 0.2025 = 0.2034, point 2: 0.0049 + 0.0025 = 0.0074 -> 0.5 (action wins)
    assert _targets([[0.3]], [[0.45]], beta=1.0) == pytest.approx([0.9])
    assert _targets([[0.3]], [[0.45]], beta=0.1) == pytest.approx([0.5])
    # beta = 10 -> the nearest state decides: s = 0.06 is nearer 0.1 than 0.0 (0.16 vs 0.36 after scaling);
    # with pi = 0.9: point 0: 0.36 + 0 = 0.36, point 1: 0.16 + 3.24 = 3.4 -> 0.9; with beta = 100 the states
    # weigh 36 vs 16 and point 1's 16 + 3.24 = 19.24 < 36 -> -0.9
    assert _targets([[0.06]], [[0.9]], beta=10.0) == pytest.approx([0.9])
    assert _targets([[0.06]], [[0.9]], beta=100.0) == pytest.approx([-0.9])


def test_prdc_actor_loss_by_hand():
    q_pi = torch.tensor([3.0, -1.0])
    pi = torch.tensor([[0.2], [-0.4]])
    a_star = torch.tensor([[0.5], [0.0]])
    lam = 2.5 / ((3 + 1) / 2)
    expected = -lam * (3 - 1) / 2 + (0.3 ** 2 + 0.4 ** 2) / 2
    assert prdc_actor_loss(q_pi, pi, a_star, alpha=2.5).item() == pytest.approx(expected)
    # lambda is detached: dL/dQ = -lambda / B; dL/dpi = 2 (pi - a*) / B
    q, p = q_pi.clone().requires_grad_(True), pi.clone().requires_grad_(True)
    prdc_actor_loss(q, p, a_star, alpha=2.5).backward()
    assert q.grad.tolist() == pytest.approx([-lam / 2, -lam / 2])
    assert p.grad.flatten().tolist() == pytest.approx([2 * -0.3 / 2, 2 * -0.4 / 2])


def test_prdc_rejects_bad_beta(fast_cfg):
    with pytest.raises(ConfigError, match="method.beta"):
        run(fast_cfg("prdc", ["method.beta=0"]))


# ---- HNPG ----------------------------------------------------------------------------------------------------


def test_conjugate_gradient_solves_2x2_spd():
    A = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
    b = torch.tensor([1.0, 2.0])
    x = conjugate_gradient(lambda v: A @ v, b, iters=10)
    # x = A^-1 b = (1/11) [[3, -1], [-1, 4]] [1, 2] = [1/11, 7/11]; CG is exact in 2 iterations
    assert x.tolist() == pytest.approx([1 / 11, 7 / 11], abs=1e-6)
    x2 = conjugate_gradient(lambda v: A @ v, b, iters=2)
    assert x2.tolist() == pytest.approx([1 / 11, 7 / 11], abs=1e-6)
    # one iteration is the steepest-descent step (b.b / b.Ab) b = (5 / 20) b
    x1 = conjugate_gradient(lambda v: A @ v, b, iters=1)
    assert x1.tolist() == pytest.approx([0.25, 0.5])


def test_kl_step_scale_by_hand():
    F = torch.tensor([[2.0, 0.0], [0.0, 8.0]])
    x = torch.tensor([1.0, 0.5])
    # x^T F x = 2 + 2 = 4; sqrt(2 * 0.01 / 4) = sqrt(0.005)
    s = kl_step_scale(x, F @ x, max_kl=0.01)
    assert s.item() == pytest.approx(math.sqrt(0.005))
    step = s * x
    assert (0.5 * step @ F @ step).item() == pytest.approx(0.01)  # the quadratic KL model equals delta


def test_hybrid_critic_loss_by_hand():
    q_on, g = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 0.0])
    q_off, y = torch.tensor([3.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 3.0])
    on = (1 + 4) / 2
    off = (4 + 0 + 9) / 3
    assert hybrid_critic_loss(q_on, g, q_off, y, 1.0).item() == pytest.approx(on + off)
    assert hybrid_critic_loss(q_on, g, q_off, y, 0.5).item() == pytest.approx(on + 0.5 * off)
    assert hybrid_critic_loss(q_on, g, q_off, y, 0.0).item() == pytest.approx(on)  # on-policy baseline: MC only
    assert fitted_q_target(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), torch.tensor([10.0, 10.0]), 0.9).tolist() \
        == pytest.approx([1 + 9.0, 2.0])


def test_returns_and_gae_by_hand():
    # two episodes: [r=1, r=2] cut by the time limit (bootstrap V=10), then [r=3] ending in a true terminal
    r = torch.tensor([1.0, 2.0, 3.0])
    v = torch.tensor([0.5, 1.0, 2.0])
    last = torch.tensor([0.0, 10.0, 99.0])  # 99 must be ignored: terminal
    ends = torch.tensor([False, True, True])
    dones = torch.tensor([False, False, True])
    G, A = returns_and_advantages(r, v, last, ends, dones, gamma=0.5, lam=0.8)
    g1 = 2 + 0.5 * 10
    assert G.tolist() == pytest.approx([1 + 0.5 * g1, g1, 3.0])
    d0, d1, d2 = 1 + 0.5 * 1.0 - 0.5, 2 + 0.5 * 10 - 1.0, 3 - 2.0
    assert A.tolist() == pytest.approx([d0 + 0.5 * 0.8 * d1, d1, d2])


def test_surrogate_and_gaussian_kl_by_hand():
    lp, old, adv = torch.tensor([0.0, math.log(2.0)]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, -1.0])
    assert surrogate_loss(lp, old, adv).item() == pytest.approx(-(1 * 1 + -1 * 2) / 2)
    # KL(N(0, 1) || N(1, e)) = 1 + (1 + 1) / (2 e^2) - 0.5
    kl = gaussian_kl(torch.tensor([[0.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.tensor([[1.0]]))
    assert kl.item() == pytest.approx(1 + 2 / (2 * math.e ** 2) - 0.5)


def test_hnpg_rejects_bad_max_kl(fast_cfg):
    with pytest.raises(ConfigError, match="method.max_kl"):
        run(fast_cfg("hnpg", ["task=pendulum_expert", "method.max_kl=0"]))


# ---- learning ------------------------------------------------------------------------------------------------


def test_prdc_learns_pendulum_expert(fast_cfg):
    summary = run(fast_cfg("prdc", ["method.hidden=[64,64]", "method.batch_size=128", "trainer.max_steps=2000",
                                    "method.val_check_interval=2000", "method.log_every=500", "task.eval_episodes=5"]))
    m = summary["metrics"]
    assert m["test/normalized_score"] > m["test_before/normalized_score"] + 40


def test_hnpg_on_policy_baseline_learns_pendulum(fast_cfg):
    # offline_weight=0: NPG with a Monte-Carlo critic; 30 iterations x 1000 environment steps (seed 0: 14.6 -> ~100)
    summary = run(fast_cfg("hnpg", ["task=pendulum_expert", "method.offline_weight=0", "method.hidden=[64,64]",
                                    "method.batch_size=1000", "trainer.max_steps=30", "method.val_check_interval=30",
                                    "method.log_every=10", "task.eval_episodes=5"]))
    m = summary["metrics"]
    assert m["test/normalized_score"] > m["test_before/normalized_score"] + 30
