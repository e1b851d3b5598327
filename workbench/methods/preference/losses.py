"""Offline preference losses as pure tensor functions (no Lightning), each tested on hand values.

Inputs are per-sequence quantities of a batch of B pairs (x, y_w, y_l):

* ``chosen`` / ``rejected``: summed log pi_theta(y|x) over completion tokens, (B,)
* ``ref_chosen`` / ``ref_rejected``: the same under the frozen reference (None for reference-free losses)
* ``chosen_tokens`` / ``rejected_tokens``: completion token counts, (B,)

``h(y) = log pi_theta(y|x) - log pi_ref(y|x)`` is the implicit reward of DPO (up to beta) and
``Delta = h(y_w) - h(y_l)`` the margin. Every loss returns per-example losses (B,); the module averages.

``PAIR_LOSSES`` maps a name (``method.loss_type``) to ``fn(lp: PairLogps, **params) -> (B,)``, so several
can be combined with weights (``loss_type: [sigmoid, sft]``, ``loss_weights: [1.0, 0.2]``), as in TRL.
KTO works on unpaired examples and has its own function, :func:`kto_loss`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.registry import Registry

PAIR_LOSSES = Registry("preference loss")
REFERENCE_FREE = {"simpo", "orpo", "cpl", "sft"}  # losses that never read a reference log-prob


@dataclass
class PairLogps:
    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None

    def logratios(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ref_chosen is None or self.ref_rejected is None:
            raise ValueError("this loss needs reference log-probs (ref_chosen / ref_rejected)")
        return self.chosen - self.ref_chosen, self.rejected - self.ref_rejected

    def margin(self) -> torch.Tensor:
        chosen, rejected = self.logratios()
        return chosen - rejected

    def mean_logps(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.chosen / self.chosen_tokens.clamp(min=1), self.rejected / self.rejected_tokens.clamp(min=1)


# ---- DPO and its direct relatives --------------------------------------------------------------------
def dpo_loss(margin: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DPO (Rafailov et al. 2023): -log sigmoid(beta Delta). With label_smoothing eps > 0 this is cDPO
    (Mitchell's note): -(1-eps) log sigmoid(beta Delta) - eps log sigmoid(-beta Delta), a conservative target."""
    return -(1 - label_smoothing) * F.logsigmoid(beta * margin) - label_smoothing * F.logsigmoid(-beta * margin)


def robust_dpo_loss(margin: torch.Tensor, beta: float, flip_rate: float) -> torch.Tensor:
    """rDPO (Chowdhury et al. 2024): [(1-eps) l(Delta) - eps l(-Delta)] / (1 - 2 eps), l(z) = -log sigmoid(beta z).

    Unbiased for the clean-label DPO loss when labels are flipped with probability eps (eps < 1/2)."""
    if not 0 <= flip_rate < 0.5:
        raise ValueError(f"robust DPO needs 0 <= flip_rate < 0.5, got {flip_rate}")
    clean = -F.logsigmoid(beta * margin)
    flipped = -F.logsigmoid(-beta * margin)
    return ((1 - flip_rate) * clean - flip_rate * flipped) / (1 - 2 * flip_rate)


def ipo_loss(chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, Eq. 17): (Delta - 1/(2 tau))^2 with tau = beta. Callers pass length-normalized
    log-ratios for the normalized form (TRL's, confirmed with the IPO authors) or summed ones for the paper's."""
    return (chosen_logratio - rejected_logratio - 1 / (2 * beta)) ** 2


def hinge_loss(margin: torch.Tensor, beta: float) -> torch.Tensor:
    """SLiC-HF calibration loss: max(0, 1 - beta Delta)."""
    return torch.relu(1 - beta * margin)


def simpo_loss(chosen_mean_logp: torch.Tensor, rejected_mean_logp: torch.Tensor, beta: float, gamma: float,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """SimPO (Meng et al. 2024): -log sigmoid(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma). No reference."""
    logits = beta * (chosen_mean_logp - rejected_mean_logp) - gamma
    return -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def orpo_odds_ratio_loss(chosen_mean_logp: torch.Tensor, rejected_mean_logp: torch.Tensor) -> torch.Tensor:
    """ORPO's preference term (Hong et al. 2024): -log sigmoid(log odds(y_w) - log odds(y_l)),
    odds(y) = P/(1-P) with P = exp(mean token log-prob). The NLL term is added by the caller (``sft``)."""
    log_odds = (chosen_mean_logp - rejected_mean_logp) - (
        torch.log1p(-torch.exp(chosen_mean_logp).clamp(max=1 - 1e-6))
        - torch.log1p(-torch.exp(rejected_mean_logp).clamp(max=1 - 1e-6))
    )
    return -F.logsigmoid(log_odds)


def cal_dpo_loss(chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float) -> torch.Tensor:
    """Cal-DPO (Xiao et al. 2024, official code): -log sigmoid(h_w - h_l) + 1/2 [(h_w - 1/(2 beta))^2 + (h_l + 1/(2 beta))^2].

    As in the official implementation there is no beta inside the sigmoid; beta only sets the calibration targets."""
    target = 1 / (2 * beta)
    return (-F.logsigmoid(chosen_logratio - rejected_logratio)
            + 0.5 * ((chosen_logratio - target) ** 2 + (rejected_logratio + target) ** 2))


def cpl_loss(chosen: torch.Tensor, rejected: torch.Tensor, alpha: float, conservative_bias: float) -> torch.Tensor:
    """CPL (Hejna et al. 2023): S(y) = alpha sum_t log pi(y_t); -log [exp S+ / (exp S+ + exp(lambda S-))]
    = softplus(lambda S- - S+) (official ``biased_bce_with_logits``). Reference-free."""
    return F.softplus(conservative_bias * alpha * rejected - alpha * chosen)


def sft_term(chosen: torch.Tensor, chosen_tokens: torch.Tensor, total_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Token-mean NLL of the chosen completions, spread over examples so that their batch mean equals
    -sum log pi(y_w) / sum |y_w| (TRL's ``sft`` loss type; RPO's averaged variant, ORPO's NLL term).
    ``total_tokens`` replaces sum |y_w| (under DDP: the rank's share of the global count, distributed.rank_share)."""
    total_tokens = (chosen_tokens.sum() if total_tokens is None else total_tokens).clamp(min=1)
    return -chosen * chosen_tokens.shape[0] / total_tokens


# ---- registry: name -> fn(PairLogps, **params) -------------------------------------------------------
@PAIR_LOSSES.register("sigmoid")
def _sigmoid(lp: PairLogps, beta: float = 0.1, label_smoothing: float = 0.0, **_):
    return dpo_loss(lp.margin(), beta, label_smoothing)


@PAIR_LOSSES.register("robust")
def _robust(lp: PairLogps, beta: float = 0.1, label_smoothing: float = 0.0, **_):
    return robust_dpo_loss(lp.margin(), beta, label_smoothing)


@PAIR_LOSSES.register("ipo")
def _ipo(lp: PairLogps, beta: float = 0.1, ipo_length_normalize: bool = True, **_):
    chosen, rejected = lp.logratios()
    if ipo_length_normalize:
        chosen, rejected = chosen / lp.chosen_tokens.clamp(min=1), rejected / lp.rejected_tokens.clamp(min=1)
    return ipo_loss(chosen, rejected, beta)


@PAIR_LOSSES.register("hinge")
def _hinge(lp: PairLogps, beta: float = 0.1, **_):
    return hinge_loss(lp.margin(), beta)


@PAIR_LOSSES.register("simpo")
def _simpo(lp: PairLogps, beta: float = 2.0, gamma_beta_ratio: float = 0.5, label_smoothing: float = 0.0, **_):
    chosen, rejected = lp.mean_logps()
    return simpo_loss(chosen, rejected, beta, gamma_beta_ratio * beta, label_smoothing)


@PAIR_LOSSES.register("orpo")
def _orpo(lp: PairLogps, **_):
    chosen, rejected = lp.mean_logps()
    return orpo_odds_ratio_loss(chosen, rejected)


@PAIR_LOSSES.register("cal_dpo")
def _cal_dpo(lp: PairLogps, beta: float = 0.1, **_):
    chosen, rejected = lp.logratios()
    return cal_dpo_loss(chosen, rejected, beta)


@PAIR_LOSSES.register("cpl")
def _cpl(lp: PairLogps, cpl_alpha: float = 0.1, cpl_conservative_bias: float = 0.5, **_):
    return cpl_loss(lp.chosen, lp.rejected, cpl_alpha, cpl_conservative_bias)


@PAIR_LOSSES.register("sft")
def _sft(lp: PairLogps, sft_tokens: torch.Tensor | None = None, **_):
    return sft_term(lp.chosen, lp.chosen_tokens, sft_tokens)


def combined_loss(lp: PairLogps, loss_types: list[str], weights: list[float], params: dict,
                  keep: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """sum_k w_k * mean(loss_k), with each term's mean returned for logging; with ``keep`` (B,) the means run
    over the kept pairs only (online methods drop ties), 0 with a gradient path when none is kept."""
    total = lp.chosen.new_zeros(())
    parts = {}
    for name, weight in zip(loss_types, weights, strict=True):
        losses = PAIR_LOSSES[name](lp, **params)
        if keep is None:
            term = losses.mean()
        else:
            mask = keep.to(losses.dtype)
            term = (losses * mask).sum() / mask.sum().clamp(min=1)
        parts[name] = term.detach()
        total = total + weight * term
    return total, parts


def implicit_rewards(lp: PairLogps, loss_types: list[str], beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The score each loss ranks completions by, for reward accuracy and margins: beta * h(y) for
    reference-based losses, beta * mean log-prob (SimPO, ORPO) or summed log-prob (CPL) without a reference."""
    uses_ref = [n for n in loss_types if n not in REFERENCE_FREE]
    if uses_ref:
        chosen, rejected = lp.logratios()
        return beta * chosen, beta * rejected
    if "cpl" in loss_types:
        return beta * lp.chosen, beta * lp.rejected
    chosen, rejected = lp.mean_logps()
    return beta * chosen, beta * rejected


# ---- KTO: unpaired desirable / undesirable examples ------------------------------------------------------
def kto_kl_baseline(kl_logps: torch.Tensor, kl_ref_logps: torch.Tensor, reduce=None) -> torch.Tensor:
    """z0 = max(0, mean over mismatched (x, y') of log pi(y'|x) - log pi_ref(y'|x)), without gradient.
    ``reduce`` averages the mean over data-parallel ranks before the clamp (distributed.global_mean), as TRL
    gathers the KL over processes, so every rank uses one z0."""
    mean = (kl_logps - kl_ref_logps).mean()
    return (mean if reduce is None else reduce(mean)).clamp(min=0).detach()


def kto_loss(logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, z0: torch.Tensor, beta: float = 0.1,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024; HALOs/TRL): per example, desirable: lambda_D (1 - sigmoid(beta (h - z0))),
    undesirable: lambda_U (1 - sigmoid(beta (z0 - h))), h = log pi(y|x) - log pi_ref(y|x)."""
    h = logps - ref_logps
    good = desirable_weight * (1 - torch.sigmoid(beta * (h - z0)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - h)))
    return torch.where(desirable.bool(), good, bad)


# ---- f-DPG: distributional policy gradient towards p ~ pi_ref exp(r / beta) ---------------------------------
F_DIVERGENCE_GRADIENTS = {
    # f'(t) at t = pi_theta / p, written in log t for stability (naver/disco losses: kl.py, js.py, ...)
    "kl": lambda log_t: -torch.exp(-log_t),  # forward KL(p || pi): DPG
    "reverse_kl": lambda log_t: log_t + 1,  # KL(pi || p): RL with a KL penalty, up to a constant
    "js": lambda log_t: math.log(2) - F.softplus(-log_t),
    "tv": lambda log_t: 0.5 * torch.sign(log_t),
}


def fdpg_loss(logps: torch.Tensor, proposal_logps: torch.Tensor, ref_logps: torch.Tensor, rewards: torch.Tensor,
              beta: float, divergence: str = "js", baseline: float | torch.Tensor = 0.0,
              group_size: int | None = None) -> tuple[torch.Tensor, dict]:
    """f-DPG (Go et al. 2023) surrogate for min D_f(pi_theta || p) = sum_y p f(pi_theta/p), p(y) = pi_ref(y) exp(r(y)/beta) / Z.

    Samples come from a proposal q (their log-probs ``proposal_logps``). With t = pi_theta/p the gradient is
    E_q[(pi_theta/q) f'(t) grad log pi_theta]; the code of the paper uses the pseudo-reward -f'(t) minus a
    baseline, so this returns mean(-(pi_theta/q) (-f'(t) - baseline) log pi_theta) with the weight detached
    (naver/disco ``tuners/losses/f_divergence.py``: ``loss = (importance_ratios * (-advantage) * policy_log_scores).mean()``,
    ``advantage = pseudo_reward - baseline``; f' of ``kl.py``, ``js.py``, ``reverse_kl.py`` as in F_DIVERGENCE_GRADIENTS).
    Z is estimated by importance sampling, Z ~ mean_q[pi_ref exp(r/beta) / q]: over the whole batch
    (``group_size=None``, one context, as disco's unconditional tuner) or, for prompt-conditional targets
    p(y|x) = pi_ref(y|x) exp(r/beta) / Z(x), per block of ``group_size`` consecutive rows (the samples of one
    prompt; disco keeps one Z estimate per context). Differences from disco: disco averages Z over all samples seen
    so far for a context (a moving average); here only the current batch's samples of the prompt. disco's ``tv.py``
    uses the pseudo-reward -sign(log t) (f(t) = |t - 1|, ties -> +1); here tv is f(t) = |t - 1| / 2, half that.
    """
    if divergence not in F_DIVERGENCE_GRADIENTS:
        raise ValueError(f"unknown divergence '{divergence}' (one of {sorted(F_DIVERGENCE_GRADIENTS)})")
    n = len(rewards)
    group = n if group_size is None else int(group_size)
    if group < 1 or n % group:
        raise ValueError(f"{n} samples do not split into groups of group_size={group_size!r}")
    with torch.no_grad():
        log_unnormalized_p = ref_logps + rewards / beta
        log_w = (log_unnormalized_p - proposal_logps).view(-1, group)
        log_z = torch.logsumexp(log_w, -1) - math.log(group)  # one per context (prompt)
        log_p = log_unnormalized_p - log_z.repeat_interleave(group)
        log_t = logps.detach() - log_p
        importance = torch.exp(logps.detach() - proposal_logps)
        pseudo_reward = -F_DIVERGENCE_GRADIENTS[divergence](log_t)
        weight = importance * (pseudo_reward - baseline)
    loss = -(weight * logps).mean()
    return loss, {"log_z": log_z.mean() if group_size is not None else log_z.squeeze(0),
                  "pseudo_reward": pseudo_reward.mean(), "importance": importance.mean(), "pseudo_rewards": pseudo_reward}
