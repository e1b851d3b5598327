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
