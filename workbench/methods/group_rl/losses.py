"""Policy losses for group RL as pure tensor functions (no Lightning), tested on hand values.

Shapes: log-probs and masks (B, T); advantages (B,) per sequence, broadcast over its tokens.
"""

from __future__ import annotations

import torch


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO loss -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) and a clipped-token indicator."""
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages.unsqueeze(-1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    was_clipped = (clipped < unclipped).float()
    return loss, was_clipped


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1 / k3)."""
    log_ratio = ref_logprobs - logprobs
    if kind == "k1":
        return -log_ratio
    if kind == "k3":  # pi_ref/pi - log(pi_ref/pi) - 1 >= 0, unbiased; the GRPO paper's estimator
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"unknown KL estimator '{kind}' (k1 or k3)")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "seq_mean_token_mean") -> torch.Tensor:
    """Reduce a (B, T) per-token quantity to a scalar.

    seq_mean_token_mean: (1/B) sum_i (1/|o_i|) sum_t x_it   (GRPO as written in DeepSeekMath)
    token_mean:          sum_it x_it / sum_i |o_i|          (DAPO's token-level loss)
    """
    mask = mask.to(per_token.dtype)
    if mode == "seq_mean_token_mean":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if mode == "token_mean":
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    raise ValueError(f"unknown loss aggregation '{mode}' (seq_mean_token_mean or token_mean)")


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    kl_kind: str = "k3",
    agg: str = "seq_mean_token_mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO: aggregate_t[ -min(rho A, clip(rho) A) + beta * KL_t(pi || pi_ref) ]."""
    per_token, was_clipped = clipped_surrogate(logprobs, old_logprobs, advantages, eps_low, eps_high)
    stats = {"clip_frac": aggregate(was_clipped, mask, "token_mean").detach()}
    if ref_logprobs is not None:
        kl = kl_estimate(logprobs, ref_logprobs, kl_kind)
        stats["kl"] = aggregate(kl, mask, "token_mean").detach()
        if beta:
            per_token = per_token + beta * kl
    return aggregate(per_token, mask, agg), stats
