"""Policy losses for group RL as pure tensor functions (no Lightning), tested on hand values.

Shapes: log-probs and masks (B, T) with B = P * G completions laid out prompt-major (the G completions of a
prompt are consecutive); advantages (B,) per sequence, broadcast over its tokens, or (B, T) per token.

``POLICY_LOSSES`` maps a name to ``fn(logprobs, old_logprobs, advantages, mask, **kw) -> (loss, stats)``:

* ``clipped`` -> :func:`grpo_loss`: PPO-clip surrogate with GRPO / Dr. GRPO / DAPO / BNPO aggregation,
  decoupled clip (DAPO), token or sequence importance ratio (GSPO, GSPO-token) and an optional KL(pi||pi_ref).
* ``disco`` -> :func:`disco_loss`: DisCO's discriminative objective with a KL(pi_old||pi) squared-hinge penalty;
  needs ``labels`` (B,) binary and ``group_size``; ignores ``advantages``.

Both take ``**_`` so a caller can pass one keyword context to either.
"""

from __future__ import annotations

import torch

from workbench.registry import Registry

POLICY_LOSSES = Registry("policy loss")

AGG_MODES = ("seq_mean_token_mean", "token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")


def _per_token_adv(advantages: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1) for broadcasting over tokens; (B, T) unchanged."""
    return advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages


def log_importance_ratio(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor | None = None, level: str = "token"
) -> torch.Tensor:
    """log of the importance ratio used in the clipped surrogate.

    ``token``: log rho_{i,t} = log pi(o_t) - log pi_old(o_t), shape (B, T) (PPO / GRPO).
    ``sequence``: GSPO (Zheng et al. 2025, Eq. for s_i): log s_i = (1/|o_i|) sum_t log rho_{i,t}, shape (B, 1),
    so s_i = exp(mean_t log rho) is the length-normalised sequence likelihood ratio, clipped per sequence.
    Same as TRL 1.16 ``importance_sampling_level="sequence"``.
    ``sequence_token``: GSPO-token: log s_{i,t} = sg[log s_i] + log pi(o_t) - sg[log pi(o_t)], shape (B, T):
    numerically s_{i,t} = s_i, but the gradient flows through each token's own log-prob, so per-token
    advantages A_{i,t} can be used (GSPO paper, section "GSPO-token").
    """
    log_ratio = logprobs - old_logprobs
    if level == "token":
        return log_ratio
    if mask is None:
        mask = torch.ones_like(log_ratio)
    mask = mask.to(log_ratio.dtype)
    seq = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    if level == "sequence":
        return seq
    if level == "sequence_token":
        return seq.detach() + logprobs - logprobs.detach()
    raise ValueError(f"unknown importance level '{level}' (token, sequence or sequence_token)")


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    mask: torch.Tensor | None = None,
    importance_level: str = "token",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO loss -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) and a clipped-token indicator.

    ``advantages`` (B,) or (B, T). With ``importance_level="sequence"`` rho is GSPO's s_i (needs ``mask``) and
    the returned tensors are still (B, T): the per-sequence value repeated on each token, so every aggregation
    below applies unchanged (``seq_mean_token_mean`` then gives (1/B) sum_i loss_i, GSPO's objective).
    ``was_clipped`` is 1 where the clipped branch is the active (smaller) one.
    """
    ratio = torch.exp(log_importance_ratio(logprobs, old_logprobs, mask, importance_level))
    adv = _per_token_adv(advantages)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    was_clipped = (clipped < unclipped).float()
    shape = torch.broadcast_shapes(loss.shape, logprobs.shape)
    return loss.expand(shape), was_clipped.expand(shape)


def clip_fractions(
    ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, eps_low: float = 0.2, eps_high: float = 0.2
) -> dict[str, torch.Tensor]:
    """Fractions of tokens whose ratio left the trust region in the direction the advantage pushes.

    ``clip_frac_low``: rho < 1 - eps_low and A < 0; ``clip_frac_high``: rho > 1 + eps_high and A > 0;
    ``clip_frac_region``: either. Token mean over the mask, or, when ``ratio`` is per sequence (B, 1), the mean
    over sequences: exactly TRL 1.16's ``clip_ratio/low_mean``, ``high_mean``, ``region_mean``.
    """
    adv = _per_token_adv(advantages)
    low = ((ratio < 1.0 - eps_low) & (adv < 0)).float()
    high = ((ratio > 1.0 + eps_high) & (adv > 0)).float()
    mask = mask.to(low.dtype)

    def mean(x):
        if x.shape[-1] == 1:  # one value per sequence
            return x.mean()
        x = x.expand(mask.shape)
        return (x * mask).sum() / mask.sum().clamp(min=1.0)

    return {
        "clip_frac_low": mean(low).detach(),
        "clip_frac_high": mean(high).detach(),
        "clip_frac_region": mean(torch.maximum(low, high)).detach(),
    }


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1 / k3).

    For KL(pi_old || pi) from samples of pi_old (DisCO's constraint) call ``kl_estimate(old_logprobs, logprobs)``.
    """
    log_ratio = ref_logprobs - logprobs
    if kind == "k1":
        return -log_ratio
    if kind == "k3":  # pi_ref/pi - log(pi_ref/pi) - 1 >= 0, unbiased; the GRPO paper's estimator
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"unknown KL estimator '{kind}' (k1 or k3)")


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "seq_mean_token_mean",
    max_length: int | None = None,
    token_normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) per-token quantity to a scalar.

    seq_mean_token_mean:     (1/B) sum_i (1/|o_i|) sum_t x_it   (GRPO as written in DeepSeekMath; TRL "grpo")
    token_mean:              sum_it x_it / sum_i |o_i|          (DAPO's token-level loss; TRL "bnpo", and TRL
                             "dapo" when ``token_normalizer`` is the token count of the whole generation batch)
    seq_mean_token_sum:      (1/B) sum_i sum_t x_it             (verl "seq-mean-token-sum")
    seq_mean_token_sum_norm: (1/B) sum_i sum_t x_it / L        (Dr. GRPO: L = ``max_length``, a constant, the
                             max generation length; TRL "dr_grpo" with L = max_completion_length)

    ``token_normalizer`` replaces the local token count of ``token_mean`` (pass the global count when a batch
    is split into minibatches whose losses are summed, as TRL's DAPO does with ``num_items_in_batch``).
    """
    mask = mask.to(per_token.dtype)
    total = per_token * mask
    if mode == "seq_mean_token_mean":
        return (total.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    if mode == "token_mean":
        denom = mask.sum().clamp(min=1) if token_normalizer is None else token_normalizer
        return total.sum() / denom
    if mode == "seq_mean_token_sum":
        return total.sum(-1).mean()
    if mode == "seq_mean_token_sum_norm":
        if not max_length:
            raise ValueError("seq_mean_token_sum_norm needs max_length (the constant generation budget)")
        return total.sum() / (per_token.shape[0] * max_length)
    raise ValueError(f"unknown loss aggregation '{mode}' ({', '.join(AGG_MODES)})")


@POLICY_LOSSES.register("clipped")
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
    max_length: int | None = None,
    importance_level: str = "token",
    token_normalizer: float | torch.Tensor | None = None,
    kl_ratio_correction: bool = False,
    **_,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO family: aggregate_t[ -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) + beta * KL_t(pi || pi_ref) ].

    Recipes (TRL 1.16 ``loss_type`` equivalents, checked in tests/test_trl_parity.py):
      GRPO      agg="seq_mean_token_mean"                        (TRL "grpo")
      Dr. GRPO  agg="seq_mean_token_sum_norm", max_length=L     (TRL "dr_grpo")
      DAPO      agg="token_mean", eps_high=0.28, beta=0          (TRL "dapo"; "bnpo" is the per-minibatch count)
      GSPO      importance_level="sequence", agg="seq_mean_token_mean", small eps (paper: 3e-4 / 4e-4)
    The KL is the k3 (or k1) estimate added to the per-token loss (not to the reward), as DeepSeekMath and TRL.
    ``kl_ratio_correction=True`` multiplies that KL term by the (differentiable) importance ratio rho, which makes
    its gradient the unbiased reverse-KL gradient when pi != pi_old (DeepSeek-V3.2; TRL 1.16's
    ``use_bias_correction_kl``, which defaults to True there; False here keeps the DeepSeekMath GRPO term).
    ``stats["kl"]`` is always the uncorrected estimate.

    stats: ``clip_frac`` (clipped branch active; what module.py logs), ``clip_frac_low`` / ``clip_frac_high`` /
    ``clip_frac_region`` (TRL's ``clip_ratio/*``), ``kl`` when ``ref_logprobs`` is given. All detached.
    """
    per_token, was_clipped = clipped_surrogate(
        logprobs, old_logprobs, advantages, eps_low, eps_high, mask=mask, importance_level=importance_level
    )
    with torch.no_grad():
        ratio = torch.exp(log_importance_ratio(logprobs, old_logprobs, mask, importance_level))
        stats = {"clip_frac": aggregate(was_clipped, mask, "token_mean").detach()}
        stats.update(clip_fractions(ratio, advantages, mask, eps_low, eps_high))
    if ref_logprobs is not None:
        kl = kl_estimate(logprobs, ref_logprobs, kl_kind)
        stats["kl"] = aggregate(kl, mask, "token_mean").detach()
        if beta:
            if kl_ratio_correction:
                kl = kl * torch.exp(log_importance_ratio(logprobs, old_logprobs, mask, importance_level))
            per_token = per_token + beta * kl
    return aggregate(per_token, mask, agg, max_length=max_length, token_normalizer=token_normalizer), stats


def disco_scores(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor, score: str = "log_l"
) -> torch.Tensor:
    """DisCO per-sequence score s(o), shape (B,).

    ``log_l``: (1/|o|) sum_t log pi(o_t) (official ``compute_policy_loss_disco_logL``: masked mean of log_prob);
    ``l_ratio``: (1/|o|) sum_t pi(o_t)/pi_old(o_t) (the paper's likelihood-ratio score, METHODS.md B4; the
    official ``..._disco_Lratio`` function was not in the code index, so this one is not code-confirmed).
    """
    mask = mask.to(logprobs.dtype)
    n = mask.sum(-1).clamp(min=1.0)
    if score == "log_l":
        return (logprobs * mask).sum(-1) / n
    if score == "l_ratio":
        return (torch.exp(logprobs - old_logprobs) * mask).sum(-1) / n
    raise ValueError(f"unknown DisCO score '{score}' (log_l or l_ratio)")


@POLICY_LOSSES.register("disco")
def disco_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    group_size: int | None = None,
    score: str = "log_l",
    tau: float = 10.0,
    beta: float = 1e3,
    delta: float = 1e-4,
    dro: bool = True,
    kl_kind: str = "k3",
    **_,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DisCO (Li et al. 2025): discriminative objective + squared-hinge KL(pi_old || pi) constraint penalty.

    Per prompt q whose group holds both classes (``labels`` 1 = correct / positive, 0 = negative; groups with a
    single class are skipped but still count in the 1/P average, as in the official code):
        J_q = mean_{o+} s(o+) - tau * log mean_{o-} exp(s(o-) / tau)       (dro=True: DRO / log-sum-exp)
        J_q = mean_{o+} s(o+) - mean_{o-} s(o-)                             (dro=False: DisCO-b, plain mean)
    KL_old = token mean over the batch of the k3 estimate of KL(pi_old || pi) (verl "low_var_kl":
    rho - 1 - log rho with rho = pi/pi_old), and the loss is
        L = -(1/P) sum_q J_q + sg[ beta * max(KL_old - delta, 0) ] * KL_old
    whose gradient is that of the squared hinge (beta/2) max(KL_old - delta, 0)^2.

    Source: ``compute_policy_loss_disco_logL`` (Optimization-AI/DisCO, ``verl/verl/trainer/ppo/core_algos.py``,
    read via the code index). Its DRO term is written as the surrogate tau * S / sg[S] with S = sum exp(s-/tau - max),
    whose value is tau and whose gradient equals that of tau * log sum exp(s-/tau); here the true log-mean-exp
    is used, so the loss *value* differs from the official one by a constant per valid group and the gradient is
    the same. Defaults are the official 1.5B script's (tau 10, beta 1e3, delta 1e-4). ``advantages`` is unused.

    stats: ``kl_old``, ``clip_frac`` (1 when KL_old > delta, the official ``pg_clipfrac``), ``valid_group_frac``.
    """
    if labels is None or group_size is None or mask is None:
        raise ValueError("disco_loss needs mask, labels (B,) binary and group_size")
    B = logprobs.shape[0]
    if B % group_size:
        raise ValueError(f"batch of {B} completions is not a whole number of groups of {group_size}")
    P = B // group_size
    mask_f = mask.to(logprobs.dtype)
    scores = disco_scores(logprobs, old_logprobs, mask_f, score).view(P, group_size)
    pos = (labels.view(P, group_size) > 0.5)
    neg = ~pos
    valid = pos.any(-1) & neg.any(-1)

    pos_f, neg_f = pos.to(scores.dtype), neg.to(scores.dtype)
    pos_mean = (scores * pos_f).sum(-1) / pos_f.sum(-1).clamp(min=1.0)
    if dro:
        neg_logits = (scores / tau).masked_fill(~neg, float("-inf"))
        # a skipped group's row would be all -inf: make it finite so no NaN leaks into the backward pass
        neg_logits = torch.where(valid.unsqueeze(-1), neg_logits, torch.zeros_like(neg_logits))
        lme = torch.logsumexp(neg_logits, dim=-1) - torch.log(neg_f.sum(-1).clamp(min=1.0))
        neg_term = tau * torch.where(valid, lme, torch.zeros_like(lme))
    else:
        neg_term = (scores * neg_f).sum(-1) / neg_f.sum(-1).clamp(min=1.0)
    per_group = torch.where(valid, pos_mean - neg_term, torch.zeros_like(pos_mean))
    objective = per_group.sum() / P

    kl_old = aggregate(kl_estimate(old_logprobs, logprobs, kl_kind), mask_f, "token_mean")
    constraint = (beta * torch.clamp(kl_old - delta, min=0.0)).detach() * kl_old
    loss = -objective + constraint
    stats = {
        "kl_old": kl_old.detach(),
        "clip_frac": (kl_old > delta).to(scores.dtype).detach(),
        "valid_group_frac": valid.to(scores.dtype).mean().detach(),
    }
    return loss, stats
