"""Advantage estimators for group RL: rewards (num_prompts, G) -> advantages (num_prompts, G).

A registry in the style of verl's ``core_algos``; the group-RL issue adds Dr. GRPO, RLOO, ...
"""

from __future__ import annotations

import torch

from workbench.registry import Registry

ADVANTAGES = Registry("advantage estimator")
register_advantage = ADVANTAGES.register


@register_advantage("grpo")
def grpo_advantage(rewards: torch.Tensor, eps: float = 1e-4, **_) -> torch.Tensor:
    """DeepSeekMath outcome supervision: A_i = (r_i - mean(r)) / (std(r) + eps), per group.

    std is the unbiased sample std (as TRL and verl compute it); a group whose rewards are all equal
    gets zero advantage and so no gradient.
    """
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, keepdim=True)
    return (rewards - mean) / (std + eps)
