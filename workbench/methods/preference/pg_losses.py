"""Online preference policy-gradient losses as pure tensor functions (no Lightning), tested on hand values.

Used by :mod:`workbench.methods.preference.pairwise_pg` (``method.pg_loss``): Nash-MD, P3O and CoPG here; f-DPG is
:func:`workbench.methods.preference.losses.fdpg_loss`. Every function returns ``(per-example losses, stats)``;
the module averages. Sequence log-probabilities are sums over completion tokens.

Where a formula could not be re-read from a primary source in this session the docstring says so.
"""

from __future__ import annotations

import torch


def nash_md_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, probability: torch.Tensor,
                 beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Nash-MD (Munos et al. 2023) as TRL implements it (``NashMDTrainer._compute_losses``).

    y ~ pi_theta, y' ~ the geometric mixture pi_mix ~ pi_theta^(1-c) pi_ref^c (token by token), and
    P = P(y > y' | x) from the judge. Per example, with per-token log-probs l_t = log pi_theta(y_t | x, y_<t),
    r_t = log pi_ref(y_t | ...) and the masked sums over completion tokens:

        loss = beta * sum_t sg(l_t - r_t) * l_t  -  (P - 1/2) * sum_t l_t

    The first term is the REINFORCE estimator of grad KL(pi_theta || pi_ref) with the per-token log-ratio as its
    reward (TRL: ``kl_div_loss = (log_ratio * model_logprobs).sum(1)``, ``log_ratio`` computed under no_grad);
    the second is REINFORCE on the preference with 1/2 as control variate. Shapes: (B, T) and (B,); returns (B,).

    stats: ``kl`` mean of sum_t (l_t - r_t) (TRL's ``loss/kl``), ``score`` mean (P - 1/2) sum_t l_t,
    ``probability`` mean P. All detached.
    """
    mask = mask.to(logprobs.dtype)
    logprobs, ref_logprobs = logprobs * mask, ref_logprobs * mask
    sequence = logprobs.sum(-1)
    score = (probability.to(logprobs.dtype) - 0.5) * sequence
    log_ratio = (logprobs - ref_logprobs).detach()
    kl_term = (log_ratio * logprobs).sum(-1)
    losses = beta * kl_term - score
    stats = {"kl": log_ratio.sum(-1).mean(), "score": score.detach().mean(), "probability": probability.float().mean()}
    return losses, stats


P3O_CLIPS = ("separate", "joint")


def p3o_loss(logp1: torch.Tensor, logp2: torch.Tensor, old1: torch.Tensor, old2: torch.Tensor,
             reward1: torch.Tensor, reward2: torch.Tensor, eps: float = 0.2, clip: str = "separate",
             ref1: torch.Tensor | None = None, ref2: torch.Tensor | None = None,
             beta: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """P3O (Wu et al. 2023, "Pairwise Proximal Policy Optimization"), two responses y1, y2 per prompt.

    Rewards first get the KL penalty folded in, per trajectory: r~_i = r_i - beta (log pi_old(y_i) - log pi_ref(y_i))
    (when ``ref1``/``ref2`` are given). The pairwise policy gradient is
        grad J = E[ (r~_1 - r~_2) grad(log pi(y1) - log pi(y2)) / 2 ],
    made proximal with trajectory-level ratios rho_i = pi(y_i)/pi_old(y_i) and A = (r~_1 - r~_2) / 2:

    * ``separate`` clipping: loss = -[min(rho_1 A, clip(rho_1) A) + min(rho_2 (-A), clip(rho_2) (-A))]
    * ``joint`` clipping:    loss = -min(rho A, clip(rho) A),  rho = rho_1 / rho_2

    with clip(.) to [1 - eps, 1 + eps]. Both have the pairwise gradient above at pi = pi_old.

    Source status: the pairwise-gradient / trajectory-wise / reward-difference structure is from the paper's
    abstract and the authors' BAIR blog post; the exact clipped forms and the 1/2 are **recalled, not re-read**
    (METHODS.md A9 PARTIAL). Inputs are (P,) sequence log-probs per pair; returns (P,).

    stats: ``clip_frac`` (fraction of ratios whose clipped branch is active), ``reward_gap`` mean |r~_1 - r~_2|.
    """
    if clip not in P3O_CLIPS:
        raise ValueError(f"unknown P3O clipping '{clip}' (one of {list(P3O_CLIPS)})")
    with torch.no_grad():
        r1, r2 = reward1.to(logp1.dtype), reward2.to(logp1.dtype)
        if ref1 is not None and ref2 is not None and beta:
            r1 = r1 - beta * (old1 - ref1)
            r2 = r2 - beta * (old2 - ref2)
        advantage = (r1 - r2) / 2

    def clipped(log_ratio, adv):
        ratio = torch.exp(log_ratio)
        unclipped, clipped_ = ratio * adv, torch.clamp(ratio, 1 - eps, 1 + eps) * adv
        return -torch.minimum(unclipped, clipped_), (clipped_ < unclipped).to(adv.dtype)

    if clip == "separate":
        loss1, c1 = clipped(logp1 - old1, advantage)
        loss2, c2 = clipped(logp2 - old2, -advantage)
        losses, clip_frac = loss1 + loss2, (c1.mean() + c2.mean()) / 2
    else:
        losses, c = clipped((logp1 - old1) - (logp2 - old2), advantage)
        clip_frac = c.mean()
    return losses, {"clip_frac": clip_frac.detach(), "reward_gap": (2 * advantage).abs().mean()}


def copg_loss(logp1: torch.Tensor, logp2: torch.Tensor, ref1: torch.Tensor, ref2: torch.Tensor,
              reward1: torch.Tensor, reward2: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CoPG (Flet-Berliac et al. 2024, "Contrastive Policy Gradient"), pairs (y, y') of the same prompt.

    With the regularized reward R_beta(y) = R(y) - beta log(pi(y)/pi_ref(y)) and
    Delta = R_beta(y) - R_beta(y'), the per-pair loss is the squared contrast

        loss = Delta^2 / (4 beta),   whose gradient is   -(1/2) Delta grad(log pi(y) - log pi(y')),

    i.e. each sample's policy gradient with the *other* sample's regularized reward as baseline, averaged over the
    two orderings (the 1/2). For preference rewards (R = +-1/2) this is IPO's squared loss (up to scale), and
    its minimiser satisfies beta log(pi/pi_ref) = R + const, the KL-regularized optimum. No importance weights:
    the pairs may come from any behaviour policy (here: the current policy, on-policy).

    Source status: the contrastive weight Delta times grad(log pi(y) - log pi(y')) is METHODS.md A15 (recalled);
    the squared-loss form and the 1/2 are **recalled, not re-read** (the paper body was not reachable here).
    Inputs (P,) sequence log-probs per pair; returns (P,).

    stats: ``delta`` mean |Delta| (detached).
    """
    delta = (reward1.to(logp1.dtype) - beta * (logp1 - ref1)) - (reward2.to(logp1.dtype) - beta * (logp2 - ref2))
    return delta ** 2 / (4 * beta), {"delta": delta.detach().abs().mean()}
