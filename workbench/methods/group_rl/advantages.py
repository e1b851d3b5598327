"""Advantage estimators for group RL, as pure tensor functions in a registry (in the style of verl's ``core_algos``).

Contract of every ``ADVANTAGES`` entry::

    fn(rewards: (P, G) tensor, **ctx) -> advantages (P, G)            # one value per completion
                                       or advantages (P, G, T)         # per token (REINFORCE++ with a mask)

``P`` prompts, ``G`` completions per prompt (group), ``T`` completion tokens. ``ctx`` may carry

* ``mask``: (P*G, T) or (P, G, T) completion mask (1 on real tokens), for the token-level estimators;
* ``cluster_ids``: (P, G) integer labels of semantically equal answers (SEED-GRPO);
* the estimator's own parameters from the config (``eps``, ``scale``, ``alpha``, ...);
* ``batch_sum``: how batch statistics (``scale="batch"``, REINFORCE++ whitening) sum over the batch. Under DDP
  the module passes ``distributed.global_sum`` so they are the global batch's, not each rank's share;
  absent, the local sums. Group statistics need no such thing: a group never spans ranks.

Unknown ``ctx`` keys are ignored, so a caller may pass one context to any estimator. Everything is computed
under ``torch.no_grad`` semantics in practice (rewards carry no graph), and no estimator mutates its input.

``brpo_advantage`` is not in the registry: it takes per-budget summary rewards (P, G, S), not (P, G).
"""

from __future__ import annotations

import math

import torch

from workbench.registry import Registry

ADVANTAGES = Registry("advantage estimator")
register_advantage = ADVANTAGES.register


def group_std_scale(rewards: torch.Tensor, centered: torch.Tensor, scale: str = "group", eps: float = 1e-4,
                    batch_sum=None) -> torch.Tensor:
    """Divide group-centred rewards by a std, as TRL 1.16's ``GRPOConfig.scale_rewards``.

    ``scale="group"``: per-prompt unbiased std of the rewards (DeepSeekMath GRPO, TRL default);
    ``scale="batch"``: one unbiased std over all P*G rewards (TRL ``"batch"``, the "Tricks or Traps" /
    REINFORCE++-style global scale); ``scale="none"``: no division (Dr. GRPO). ``eps`` is added to the std as
    TRL does (``advantages / (std + 1e-4)``). Source: ``trl/trainer/grpo_trainer.py``,
    ``_generate_and_score_completions`` (TRL 1.16). ``batch_sum`` (see the module docstring) makes the "batch"
    std the global batch's under DDP.
    """
    if scale == "group":
        std = rewards.std(dim=-1, keepdim=True) if rewards.shape[-1] > 1 else torch.zeros_like(rewards[..., :1])
    elif scale == "batch" and batch_sum is not None:
        n = batch_sum(rewards.new_tensor(float(rewards.numel())))
        mean = batch_sum(rewards.sum()) / n
        var = batch_sum(((rewards - mean) ** 2).sum()) / (n - 1).clamp(min=1)
        std = var.sqrt() if n > 1 else torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    elif scale == "batch":
        std = rewards.std() if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    elif scale == "none":
        return centered
    else:
        raise ValueError(f"unknown reward scale '{scale}' (group, batch or none)")
    return centered / (std + eps)


@register_advantage("grpo")
def grpo_advantage(rewards: torch.Tensor, eps: float = 1e-4, scale: str = "group", batch_sum=None, **_) -> torch.Tensor:
    """DeepSeekMath outcome supervision: A_i = (r_i - mean_group(r)) / (std(r) + eps).

    std is the unbiased sample std (as TRL and verl compute it); a group whose rewards are all equal gets zero
    advantage and so no gradient. ``scale`` picks the std as TRL's ``scale_rewards`` ("group" default, "batch",
    "none"), see :func:`group_std_scale`; ``scale="none"`` is exactly ``dr_grpo``.
    """
    centered = rewards - rewards.mean(dim=-1, keepdim=True)
    return group_std_scale(rewards, centered, scale, eps, batch_sum)


@register_advantage("dr_grpo")
def dr_grpo_advantage(rewards: torch.Tensor, **_) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): A_i = r_i - mean_group(r), no std.

    Dropping the std removes GRPO's question-difficulty weighting. Source: ``sail-sg/understand-r1-zero``
    ("Dr. GRPO Modification 2"), TRL ``scale_rewards="none"``, verl ``norm_adv_by_std_in_grpo=False``.
    Pair with the ``seq_mean_token_sum_norm`` loss aggregation (Modification 1) for the full method.
    """
    return rewards - rewards.mean(dim=-1, keepdim=True)


@register_advantage("rloo")
def rloo_advantage(rewards: torch.Tensor, **_) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): A_i = r_i - (1/(G-1)) sum_{j != i} r_j  =  G/(G-1) * (r_i - mean(r)).

    Leave-one-out baseline, unbiased because the baseline does not depend on sample i. Source: TRL
    ``RLOOTrainer``, verl ``compute_rloo_outcome_advantage``. Needs G >= 2. The paper folds a sequence KL into
    the reward (r_i <- r_i - beta * sum_t (log pi - log pi_ref)); that is the caller's job, before this call.
    """
    G = rewards.shape[-1]
    if G < 2:
        raise ValueError("rloo needs at least 2 completions per prompt")
    others_mean = (rewards.sum(dim=-1, keepdim=True) - rewards) / (G - 1)
    return rewards - others_mean


def _token_mask(mask: torch.Tensor | None, P: int, G: int) -> torch.Tensor | None:
    if mask is None:
        return None
    return mask.reshape(P, G, -1).float()


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8, unbiased: bool = True,
                  batch_sum=None) -> torch.Tensor:
    """verl ``masked_whiten``: (x - mean) * rsqrt(var + eps), mean and var over the masked entries (unbiased: with
    Bessel's correction, as verl's masked_var(unbiased=True)). Every family whitens advantages through this.
    ``batch_sum`` (e.g. distributed.global_sum) takes the three sums over more than this tensor: the global batch."""
    total = batch_sum or (lambda x: x)
    mask = mask.to(values.dtype)
    n = total(mask.sum())
    if n == 0:
        return torch.zeros_like(values)
    mean = total((values * mask).sum()) / n
    var = total((((values - mean) ** 2) * mask).sum()) / n
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return (values - mean) * torch.rsqrt(var + eps)


def _whiten_over_tokens(per_seq: torch.Tensor, mask: torch.Tensor | None, eps: float, batch_sum=None) -> torch.Tensor:
    """Broadcast a (P, G) per-sequence value to its tokens and whiten over every valid token of the batch."""
    P, G = per_seq.shape
    tok = _token_mask(mask, P, G)
    if tok is None:  # no token mask: every sequence counts once (equals token weighting only for equal lengths)
        return masked_whiten(per_seq, torch.ones_like(per_seq), eps, batch_sum=batch_sum)
    values = per_seq.unsqueeze(-1).expand_as(tok)
    return masked_whiten(values, tok, eps, batch_sum=batch_sum) * tok


@register_advantage("reinforce_pp")
def reinforce_pp_advantage(rewards: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8, batch_sum=None,
                           **_) -> torch.Tensor:
    """REINFORCE++ (Hu et al. 2025), outcome reward only, gamma = 1.

    Token rewards are 0 except the outcome reward r_i at the last token, so with gamma = 1 the return is
    G_{i,t} = r_i on every valid token of completion i. The advantage is G whitened over *all valid tokens of
    the global batch* (not per prompt): A = (G - mean) / sqrt(var_unbiased + 1e-8), then zeroed on padding.
    Source: verl ``compute_reinforce_plus_plus_outcome_advantage`` (+ ``verl_F.masked_whiten``); OpenRLHF
    ``experience_maker`` (``reinforce``). Returns (P, G, T) with ``mask``; without one, (P, G) whitened over
    sequences (each sequence weighted once).

    The KL-in-reward part of REINFORCE++ (token rewards -beta * KL_t, which make G_t differ per token) is NOT
    done here: the caller adds it to the reward (or uses the loss-side KL); with only an outcome reward and
    gamma = 1 the per-token returns are constant within a completion, as computed here.
    """
    return _whiten_over_tokens(rewards.float(), mask, eps, batch_sum)


@register_advantage("reinforce_pp_baseline")
def reinforce_pp_baseline_advantage(
    rewards: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-8, batch_sum=None, **_
) -> torch.Tensor:
    """REINFORCE++-baseline: subtract the group mean of the outcome reward, then whiten over all valid tokens.

    A_{i,t} = whiten_batch(r_i - mean_group(r)). Source: verl ``compute_reinforce_plus_plus_baseline_outcome_advantage``
    (group mean via ``index``; the per-group mean of a singleton group is 0), OpenRLHF ``reinforce_baseline``.
    Output shapes as :func:`reinforce_pp_advantage`.
    """
    rewards = rewards.float()
    centered = rewards - rewards.mean(dim=-1, keepdim=True) if rewards.shape[-1] > 1 else rewards
    return _whiten_over_tokens(centered, mask, eps, batch_sum)


def semantic_entropy(cluster_ids: torch.Tensor, estimator: str = "entropy") -> torch.Tensor:
    """Per-prompt semantic entropy from (P, G) cluster labels, with cluster probabilities p_k = |C_k| / G.

    ``estimator="entropy"``: SE = -sum_k p_k log p_k, which equals the Monte-Carlo estimate
    -(1/G) sum_i log p(C(o_i)) over the G samples (Kuhn et al. 2023, discrete/frequency variant).
    ``estimator="cluster_mean"``: SE = -(1/K) sum_k log p_k, the form SEED-GRPO's paper writes (as quoted by
    the review at themoonlight.io, see :func:`seed_grpo_advantage`). Both are 0 when all answers agree and
    log G when all G answers differ. Natural log.
    """
    P, G = cluster_ids.shape
    out = torch.zeros(P, dtype=torch.float32, device=cluster_ids.device)
    for p in range(P):
        _, counts = torch.unique(cluster_ids[p], return_counts=True)
        probs = counts.float() / G
        if estimator == "entropy":
            out[p] = -(probs * probs.log()).sum()
        elif estimator == "cluster_mean":
            out[p] = -probs.log().mean()
        else:
            raise ValueError(f"unknown semantic-entropy estimator '{estimator}' (entropy or cluster_mean)")
    return out


_SEED_F = {
    "linear": lambda x, gamma: 1.0 - x,
    "exponential": lambda x, gamma: torch.exp(-x),
    "focal": lambda x, gamma: (1.0 - x).clamp(min=0.0) ** gamma,
    "inverse": lambda x, gamma: 1.0 / (1.0 + x),
}


@register_advantage("seed_grpo")
def seed_grpo_advantage(
    rewards: torch.Tensor,
    cluster_ids: torch.Tensor | None = None,
    alpha: float = 1.0,
    f: str = "linear",
    gamma: float = 2.0,
    estimator: str = "entropy",
    scale: str = "none",
    eps: float = 1e-4,
    batch_sum=None,
    **_,
) -> torch.Tensor:
    """SEED-GRPO (Chen et al. 2025, arXiv 2505.12346): A^_i = A_i * f(alpha * SE(q) / SE_max(q)).

    A_i = r_i - mean_group(r) (``scale="none"``, the paper's A_i; ``"group"``/``"batch"`` give GRPO's std
    scaling first); SE(q) from the (P, G) ``cluster_ids`` of semantically equal answers (:func:`semantic_entropy`,
    frequency probabilities); SE_max(q) = log G (all G answers distinct). f is decreasing in uncertainty:
    ``linear`` 1 - x, ``exponential`` exp(-x), ``focal`` (1 - x)^gamma, ``inverse`` 1 / (1 + x).

    Status of f and alpha: NOT CONFIRMED from the paper body. What was read (search tool, 2025 sources):
    the arXiv abstract (https://arxiv.org/html/2505.12346v1: "scale advantages by semantic entropy, conservative
    updates on high-uncertainty questions"), the themoonlight.io review (A^_i = A_i * f(alpha * SE / SE_max),
    f in {linear, exponential, focal}, A_i = r_i - mean, SE_max the maximum possible SE) and a third-party
    reimplementation (GitHub code corpus, ``compute_reward_statistics`` / ``_compute_seed_grpo_statistics``,
    said to "match the official exact-answer clustering") that uses scale = 1 / (1 + (alpha / log G) * SE) with
    alpha = 0.0417 and probability-weighted cluster masses: that is ``f="inverse", alpha=0.0417`` here, up to
    using frequency instead of likelihood-weighted cluster probabilities. The exact paper f and alpha could not
    be read; the defaults (linear, alpha = 1: a prompt whose G answers all differ gets zero advantage) are a
    choice, not the paper's. Set them explicitly in a config.
    """
    if cluster_ids is None:
        raise ValueError("seed_grpo needs cluster_ids (P, G): labels of semantically equal answers")
    if f not in _SEED_F:
        raise ValueError(f"unknown SEED-GRPO scaling '{f}' ({', '.join(_SEED_F)})")
    P, G = rewards.shape
    base = group_std_scale(rewards, rewards - rewards.mean(dim=-1, keepdim=True), scale, eps, batch_sum)
    se = semantic_entropy(cluster_ids.reshape(P, G), estimator).to(base.device, base.dtype)
    se_max = math.log(G) if G > 1 else 1.0
    factor = _SEED_F[f](alpha * se / se_max, gamma)
    return base * factor.unsqueeze(-1)


def brpo_advantage(
    scores: torch.Tensor,
    budget_probs: torch.Tensor,
    variance_reduction: str = "brpo",
    discount: float = 2.0,
) -> torch.Tensor:
    """BRPO thinking-token advantage at each budget split (AnytimeReasoner, Qi et al. 2025).

    ``scores``: (P, G, S) mean summary reward of trajectory g truncated at budget s (or (P, G, S, A) with A
    summaries per split, averaged here); ``budget_probs``: (S,) prior over budgets (normalised here).
    Output (P, G, S): the advantage of the thinking tokens between split s-1 and s.

    With p the normalised prior and r_{g,j} the score at budget j:
        return_{g,s} = sum_{j >= s} p_j r_{g,j}
        V2_s         = mean_g return_{g,s}                         (0 when G = 1)
        V1_{g,s}     = [sum_{k<s} 2^k r_{g,k} / sum_{k<s} 2^k] * sum_{j >= s} p_j      (0 at s = 0)
        baseline     = (s * V1 + (S - s) * V2) / S                 ("brpo"; "v1only", "v2only", "none" too)
        A_{g,s}      = return_{g,s} - baseline
    Source: ``verl/verl/trainer/ppo/brpo.py::compute_cot_advantage`` of AnytimeReasoner, read from the fork
    ``wjurayj/AnytimeReasoner`` (commit 068a38bb) in the code index; the official ``sail-sg/AnytimeReasoner``
    itself was not in the index. ``discount`` is the code's ``discount_factor = 2.0`` (later budgets weigh more).
    """
    if scores.dim() == 4:
        scores = scores.mean(dim=-1)
    scores = scores.float()
    P, G, S = scores.shape
    p = budget_probs.to(scores.device, scores.dtype)
    p = p / p.sum()
    tail = p.flip(0).cumsum(0).flip(0)  # sum_{j >= s} p_j
    ret = (scores * p).flip(-1).cumsum(-1).flip(-1)  # (P, G, S)
    v2 = ret.mean(dim=1, keepdim=True).expand_as(ret) if G > 1 else torch.zeros_like(ret)
    w = discount ** torch.arange(S, dtype=scores.dtype, device=scores.device)
    prefix_num = torch.cumsum(scores * w, dim=-1) - scores * w  # sum_{k < s} w_k r_k
    prefix_den = torch.cumsum(w, dim=0) - w
    v1 = torch.where(prefix_den > 0, prefix_num / prefix_den.clamp(min=1e-12), torch.zeros_like(prefix_num)) * tail
    s_idx = torch.arange(S, dtype=scores.dtype, device=scores.device)
    if variance_reduction == "brpo":
        baseline = (s_idx * v1 + (S - s_idx) * v2) / S
    elif variance_reduction == "v1only":
        baseline = v1
    elif variance_reduction == "v2only":
        baseline = v2
    elif variance_reduction == "none":
        baseline = torch.zeros_like(ret)
    else:
        raise ValueError(f"unknown BRPO variance reduction '{variance_reduction}' (brpo, v1only, v2only, none)")
    return ret - baseline
