"""Pure tensor pieces of the online / iterative preference methods (no Lightning), each tested on hand values.

Inputs are per-sequence summed log-probabilities of B pairs (x, y_w, y_l) or of N sampled completions, as
in losses.py. ``h(y) = log pi_theta(y|x) - log pi_ref(y|x)``; a "log-ratio of a pair" under a model m is
``log m(y_w|x) - log m(y_l|x)``. What each function implements, where the formula comes from and how far it
was confirmed is in its docstring (see also workbench/methods/preference/online.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


# ---- INPO (Zhang et al., ICLR 2025, arXiv 2407.00617) -----------------------------------------------------
def inpo_loss(policy_logratio: torch.Tensor, ref_logratio: torch.Tensor, anchor_logratio: torch.Tensor,
              eta: float, tau: float) -> torch.Tensor:
    """INPO: (h_t - eta/2)^2 per pair, with

        h_t = [log pi(y_w) - log pi(y_l)] - eta*tau [log pi_ref(y_w) - log pi_ref(y_l)]
                                          - (1 - eta*tau) [log pi_t(y_w) - log pi_t(y_l)]

    pi_t is the policy at the start of the iteration (the online-mirror-descent iterate), pi_ref the frozen
    reference. Its minimizer is the OMD step pi_{t+1} ~ pi_t^(1 - eta tau) pi_ref^(eta tau) exp(eta P(y > pi_t)),
    an IPO-like squared loss with two anchors (tau = 0: IPO with pi_t as reference and 1/(2 tau_IPO) = eta/2).

    Source: the structure (two log-ratio anchors with weights eta*tau and 1 - eta*tau, target eta/2) is the
    paper's loss as recalled, and matches a public third-party implementation written in the reciprocal
    parameterization (target 1/(2 eta'), anchors tau/eta' and 1 - tau/eta', eta' = 1/eta). The paper text
    itself could not be read in this session: NOT CONFIRMED from the primary source; eta/tau defaults are ours.
    """
    h = policy_logratio - eta * tau * ref_logratio - (1 - eta * tau) * anchor_logratio
    return (h - eta / 2) ** 2


# ---- OFS-DPO (Qi et al. 2024, arXiv 2406.05534): the fast-slow chasing regularizer -------------------------
def ofs_chasing_loss(leader_margin: torch.Tensor, chaser_margin: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * L_FS(leader) - alpha * L_FS(chaser), per pair, where m = beta [h(y_w) - h(y_l)] is a module's DPO
    logit (its own log-ratios against the frozen reference) and

        L_FS(leader) = -log sigmoid(m_L - sg(m_C)),   L_FS(chaser) = -log sigmoid(sg(m_L) - m_C)

    (sg: stop-gradient). L_FS is DPO between the two modules (one module's policy as the other's
    reference). The leader (the module with the lower DPO loss over the last swap interval) is pushed to widen
    its lead; the chaser, through the minus sign, to close the gap. Both gradients are
    -alpha (1 - sigmoid(m_L - m_C)) on their own margin: unlike DPO's they do not vanish while the other
    module is close. The two terms have the same value, so the returned value is 0; only the gradients act
    (log L_FS itself, -log sigmoid(m_L - m_C), to watch the gap).

    Source: the paper's Eq. 3-6 / Algorithm 1 as written in a public third-party reimplementation that
    cites them (two LoRA modules, fast lr and slow lr = lr * ratio, the F/S roles reassigned every interval to
    the module with the lower DPO loss). The paper text itself could not be read in this session: NOT
    CONFIRMED from the primary source.
    """
    leader = -F.logsigmoid(leader_margin - chaser_margin.detach())
    chaser = -F.logsigmoid(leader_margin.detach() - chaser_margin)
    return alpha * leader - alpha * chaser


# ---- HyPO (Song et al., NeurIPS 2024, arXiv 2406.01462): online reverse-KL term ----------------------------
def hypo_kl_surrogate(logps: torch.Tensor, ref_logps: torch.Tensor, group_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE surrogate of KL(pi_theta || pi_ref) on unlabeled samples y ~ pi_theta(.|x).

    With r_i = log pi_theta(y_i|x) - log pi_ref(y_i|x) (no gradient) and, for k >= 2 samples per prompt, the
    leave-one-out baseline b_i = mean_{j != i} r_j (RLOO; b = 0 for k = 1):

        surrogate = mean_i (r_i - b_i) * log pi_theta(y_i|x)

    whose gradient is an unbiased estimate of grad KL(pi_theta || pi_ref) = E[(log pi_theta/pi_ref) grad log pi_theta].
    Rows are grouped as i*k .. i*k+k-1 per prompt. Returns (surrogate, KL estimate mean_i r_i).

    Source: HyPO's objective DPO(offline pairs) + lambda * KL on online samples (abstract, METHODS.md A8); the
    paper's hyperparameter table lists a k "for RLOO", read here as the leave-one-out baseline above. The exact
    estimator in the paper's algorithm and its lambda were not readable in this session (PARTIAL).
    """
    r = (logps - ref_logps).detach()
    if group_size >= 2:
        groups = r.view(-1, group_size)
        baseline = ((groups.sum(-1, keepdim=True) - groups) / (group_size - 1)).reshape(-1)
    else:
        baseline = torch.zeros_like(r)
    return ((r - baseline) * logps).mean(), r.mean()


# ---- DNO-Prct (Rosset et al. 2024, arXiv 2404.03715) ranking, shared by DNO and INPO ----------------------
def best_worst_by_win_rate(prefs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """prefs: (B, K, K), prefs[b, i, j] = P(y_i > y_j | x_b) (diagonal ignored).

    Each sample's win rate against the other K-1 is w_i = mean_{j != i} P(y_i > y_j); the pair is (argmax w,
    argmin w) (first index on ties) and its margin w_best - w_worst in [0, 1] (0: nothing to learn).
    Returns (best index, worst index, margin), each (B,).
    """
    K = prefs.shape[-1]
    off_diagonal = 1 - torch.eye(K, dtype=prefs.dtype, device=prefs.device)
    wins = (prefs * off_diagonal).sum(-1) / (K - 1)
    best, worst = wins.argmax(-1), wins.argmin(-1)
    margin = wins.gather(-1, best[:, None]).squeeze(-1) - wins.gather(-1, worst[:, None]).squeeze(-1)
    return best, worst, margin


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean over the kept rows (mask 1); 0 with a gradient path when none is kept."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)
