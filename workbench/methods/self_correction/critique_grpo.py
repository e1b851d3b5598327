"""Critique-GRPO (Zhang et al. 2025, arXiv 2506.03106): GRPO whose groups also hold refinements written after a
critique, learned as off-policy samples of the *first* attempt.

One step, for each of P problems x with G = ``group_size`` slots and k = ``n_refine`` of them for refinements:

    1. y1_1 .. y1_{G-k} ~ π(·|x)                          on-policy first attempts, rewards r(y1_j)
    2. c_j = critique(y1_j)                               by rule from the verifier (no LLM critic):
           simple     the verdict ("Your answer is correct." / "... incorrect.": the protocol's verdict texts)
           simple_gt  the verdict + " The correct answer is <answer>."  (the paper's ground-truth critique)
    3. y2_j ~ π(·|x, y1_j, c_j)                           one refinement per first attempt
       keep k of them: correct ones first, in sample order, then the highest-reward ones (paper:
       ``process_refinement_groups`` keeps the first refinement with score 1, else the highest-scoring one)
    4. group = (y1_1 .. y1_{G-k}, kept y2's);  A_i = r_i − mean_group(r)     (``grpo_use_std=False``: no std)
    5. per token t of sequence i, with p_it = π(o_it | x, o_i,<t) — for a refinement conditioned on the ORIGINAL
       prompt x, not on (x, y1, c): the refinement is an off-policy sample of the first attempt (LUFFY-style prefix)
       and that is what teaches the first attempt:
           on-policy  ℓ_it = −A_i · ρ_it,  ρ_it = π(o_it)/π_old(o_it)   (no clip: ``loss_remove_clip``; optional clip)
           refinement ℓ_it = −A_i · f(p_it),  f(p) = p / (p + γ),  γ = 0.1   (``off_policy_reshape=p_div_p_0.1``;
                      no importance ratio, no clip: f shrinks the gradient A·γp/(p+γ)² of tokens the policy already
                      finds likely and keeps it alive for unlikely ones, where −A·p would vanish)
           (+ β·KL_t(π ‖ π_ref) per on-policy token when β > 0; the paper's KL coefficient is 0)
       L = (1 / (B · L_max)) Σ_i Σ_t mask_it · ℓ_it          B = P·G sequences, L_max = ``max_new_tokens``

Normalization, from the official code (``critique_core_algos.compute_token_on_off_policy_loss`` with
``loss_remove_token_mean=True``): each micro-batch's loss is Σ_{i,t} mask·ℓ / T with T = ``response_mask.shape[-1]``,
the padded response width (verl pads responses to the max response length: a constant), and the actor divides it by
the number of micro-batches (gradient accumulation). The mini-batch gradient is therefore
micro_batch_size × (1 / (B·T)) Σ_{i,t} mask·ℓ: the expression above (Dr. GRPO's ``seq_mean_token_sum_norm``) times a
constant that only rescales the learning rate. We drop that constant.

Option, not in the paper (``refinement_turn_coef`` c, default 0 = the paper): the refinements above teach the
*first* attempt only, so the second turn (x, y1, c) -> y2 is never trained and drifts with the shared weights. With
c > 0 every sampled refinement is also an on-policy sample of the second turn, in its real context, with its own group
baseline over the problem's n refinements:

    A2_j = r(y2_j) − mean_j r(y2_j)  (the same estimator, ``advantage``)      L += c · L_on(y2 | x, y1_j, c_j; A2)

where L_on is the on-policy term above (ratio, sum over tokens / L_max, mean over the P·n refinements). Copying a
confirmed answer and fixing a refuted one are then rewarded on the turn that Accuracy@t2 measures.

Not implemented: the paper's ``text`` critiques (GPT-4o chains of thought comparing y1 with the reference
solution; refused in the config) and its entropy bonus (coefficient 0.001; our log-prob path returns the entropy
without a gradient). With one update per rollout π_old = π (detached), so ρ = 1 with the gradient of log π.
Deviation: verl's KL loss (unused by the paper: coefficient 0) averages over every response token; here β·KL and
the logged ``kl`` cover on-policy tokens only, the samples of π that k3 estimates KL(π ‖ π_ref) from.
"""

from __future__ import annotations

import torch

from workbench.errors import ConfigError
from workbench.methods.group_rl.advantages import ADVANTAGES
from workbench.methods.group_rl.losses import kl_estimate
from workbench.methods.self_correction.module import SelfCorrectionModule, TwoAttempts
from workbench.policy.sampler import Rollout

CRITIQUE_TYPES = ("simple", "simple_gt")


# ---- the pure parts, tested on hand values --------------------------------------------------------------------
def reshape_prob(logprobs: torch.Tensor, gamma: float) -> torch.Tensor:
    """f(p) = p / (p + γ) of p = exp(log p): the paper's ``p_div_p_γ`` off-policy reshaping."""
    p = torch.exp(logprobs)
    return p / (p + gamma)


def critique_grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    off_policy_mask: torch.Tensor,
    gamma: float = 0.1,
    max_length: int | None = None,
    clip_eps: tuple[float, float] | None = None,
    ref_logprobs: torch.Tensor | None = None,
    beta: float = 0.0,
    kl_kind: str = "k3",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Σ_{i,t} mask_it · [ (1−off_i)·(−A_i·ρ_it + β·KL_it) + off_i·(−A_i·f(p_it)) ] / (B · L_max).

    ``logprobs`` / ``old_logprobs`` / ``mask`` (B, T); ``advantages`` (B,); ``off_policy_mask`` (B,) or (B, T), 1 on
    refinement (off-policy) tokens. ``max_length`` L_max defaults to T. ``clip_eps`` (low, high) clips the on-policy
    ratio as PPO (−min(ρA, clip(ρ)A)); None is the paper's ``loss_remove_clip``. Refinement tokens are never
    ratio-weighted or clipped. stats: ``on_pg_loss`` / ``off_pg_loss`` (token means over each kind, as the official
    logs), ``off_prob`` (mean p on refinement tokens), ``off_reshaped`` (mean f(p)), ``clip_frac``, ``kl`` (token mean over on-policy tokens).
    """
    mask = mask.to(logprobs.dtype)
    off = off_policy_mask.to(logprobs.dtype)
    off = off.unsqueeze(-1).expand_as(mask) if off.dim() == 1 else off
    on = 1.0 - off
    adv = advantages.to(logprobs.dtype).unsqueeze(-1)

    ratio = torch.exp(logprobs - old_logprobs)
    on_loss = -adv * ratio
    clipped_frac = torch.zeros((), dtype=logprobs.dtype)
    if clip_eps is not None:
        low, high = clip_eps
        clipped = -adv * torch.clamp(ratio, 1.0 - low, 1.0 + high)
        clipped_frac = ((clipped > on_loss).to(mask.dtype) * on * mask).sum() / (on * mask).sum().clamp(min=1)
        on_loss = torch.maximum(on_loss, clipped)
    reshaped = reshape_prob(logprobs, gamma)
    off_loss = -adv * reshaped
    per_token = on * on_loss + off * off_loss

    stats: dict[str, torch.Tensor] = {}
    if ref_logprobs is not None:
        # on-policy tokens only: k3 estimates KL(π ‖ π_ref) from samples of π; on a refinement the policy has
        # pushed down it is no estimate at all (π_ref/π explodes), so it neither enters the penalty nor the stat
        kl = kl_estimate(logprobs, ref_logprobs, kl_kind) * on
        stats["kl"] = ((kl * mask).sum() / (on * mask).sum().clamp(min=1)).detach()
        if beta:
            per_token = per_token + beta * kl

    B, T = mask.shape
    loss = (per_token * mask).sum() / (B * (max_length or T))

    def token_mean(x, where):
        return ((x * where * mask).sum() / (where * mask).sum().clamp(min=1)).detach()

    stats.update(on_pg_loss=token_mean(on_loss, on), off_pg_loss=token_mean(off_loss, off),
                 off_prob=token_mean(torch.exp(logprobs), off), off_reshaped=token_mean(reshaped, off),
                 clip_frac=clipped_frac.detach())
    return loss, stats


def select_refinements(correct: torch.Tensor, rewards: torch.Tensor, k: int) -> torch.Tensor:
    """(P, n) verdicts and rewards of each problem's n refinements -> (P, k) indices of the kept ones.

    Correct refinements come first, in sample order (the paper keeps the *first* one with score 1); then the
    incorrect ones by reward, highest first, ties in sample order (the paper's fallback: the highest-scoring one).
    """
    key = torch.where(correct.bool(), torch.full_like(rewards, float("inf")), rewards.float())
    return torch.sort(key, dim=-1, descending=True, stable=True).indices[:, :k]


def group_advantages(on_rewards: torch.Tensor, refine_rewards: torch.Tensor, advantage: str = "dr_grpo",
                     **params) -> torch.Tensor:
    """(P, G−k) first-attempt and (P, k) kept-refinement rewards -> (P, G) advantages of the combined group, laid
    out first attempts then refinements. ``dr_grpo``: A = r − mean_group(r) (the paper's grpo_use_std=False)."""
    return ADVANTAGES[advantage](torch.cat([on_rewards, refine_rewards], dim=-1).float(), **params)


def refinement_turn_advantages(second_rewards: torch.Tensor, advantage: str = "dr_grpo", **params) -> torch.Tensor:
    """(P, n) rewards of every sampled refinement -> (P, n) advantages of the second turn, each problem's n
    refinements one group (``refinement_turn_coef`` > 0 only; not in the paper)."""
    return ADVANTAGES[advantage](second_rewards.float(), **params)


def rule_critiques(protocol, correct: torch.Tensor, answers: list[str], critique_type: str) -> list[str]:
    """The verifier's critique of each first attempt: its verdict, plus the answer for ``simple_gt``."""
    verdicts = [protocol.verdict(bool(c)) for c in correct.tolist()]
    if critique_type == "simple":
        return verdicts
    return [f"{v} The correct answer is {a}." for v, a in zip(verdicts, answers)]


def validate_critique_grpo(m) -> None:
    kind = m.get("critique_type")
    if kind == "text":
        raise ConfigError("method.critique_type", "'text' critiques are chain-of-thought critiques written by GPT-4o "
                          "in the paper, and no LLM critic is available here", "use simple or simple_gt")
    if kind not in CRITIQUE_TYPES:
        raise ConfigError("method.critique_type", f"unknown {kind!r}", f"use one of {list(CRITIQUE_TYPES)}")
    gamma = m.get("gamma")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
        raise ConfigError("method.gamma", f"must be a number > 0, got {gamma!r}", "e.g. method.gamma=0.1 (the paper's)")
    G, k = m.get("group_size"), m.get("n_refine")
    if isinstance(k, bool) or not isinstance(k, int) or not isinstance(G, int) or not 1 <= k <= G - 1:
        top = G - 1 if isinstance(G, int) else "group_size - 1"
        raise ConfigError("method.n_refine", f"must be a whole number in [1, {top}] (group_size - 1), got {k!r}",
                          "e.g. method.n_refine=1 (the paper's 7 attempts + 1 refinement with group_size=8)")
    if not isinstance(m.get("loss_remove_clip", True), bool):
        raise ConfigError("method.loss_remove_clip", f"must be true or false, got {m.get('loss_remove_clip')!r}",
                          "true is the paper's unclipped on-policy term")
    if m.get("shared_prefix", False):
        raise ConfigError("method.shared_prefix", "is not supported by critique_grpo", "set method.shared_prefix=false")
    coef = m.get("refinement_turn_coef", 0.0)
    if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not coef >= 0:
        raise ConfigError("method.refinement_turn_coef", f"must be a number >= 0, got {coef!r}",
                          "0 is the paper (refinements teach the first attempt only); e.g. 1.0 also trains the second turn")


class CritiqueGRPOModule(SelfCorrectionModule):
    def __init__(self, policy, task, method, trainer_cfg=None):
        validate_critique_grpo(method)
        super().__init__(policy, task, method, trainer_cfg)

    def critique_rollouts(self, batch: dict, n: int) -> TwoAttempts:
        """n first attempts per problem, the rule critique of each and one refinement after it (sampled): the family's
        two-attempt rollout with the rule critiques as feedback."""
        def critiques(fields, firsts, correct):
            return rule_critiques(self.protocol, correct, fields["answer"], self.cfg.critique_type)

        return self.two_attempts(batch, n, self.cfg.temperature, feedback_fn=critiques)

    @staticmethod
    def combined_group(first: Rollout, second: Rollout, kept: torch.Tensor, pad_id: int) -> Rollout:
        """Each problem's G−k first attempts then its k kept refinements, every row under the attempt-1 prompt.

        ``kept`` (P, k) indexes refinements within the problem's n = G−k. A refinement's prompt is replaced by its
        problem's attempt-1 prompt (the rows of one problem share it), so its log-probs are those of a first attempt.
        """
        P, k = kept.shape
        n = len(first) // P
        rows = (torch.arange(P).unsqueeze(-1) * n + kept.cpu()).reshape(-1)
        refined, under_x = second.select(rows), first.select(rows)  # row p*n+j of `first` has problem p's prompt
        refined = Rollout(under_x.prompt_ids, under_x.prompt_mask, refined.completion_ids, refined.completion_mask,
                          refined.texts, refined.truncated)
        order = [j for p in range(P) for j in [p * n + i for i in range(n)] + [P * n + p * k + i for i in range(k)]]
        return Rollout.cat([first, refined], pad_id).select(order)

    def training_step(self, batch, batch_idx):
        cfg, G, k = self.cfg, int(self.cfg.group_size), int(self.cfg.n_refine)
        n = G - k
        self._times = {}
        with self._timed("generation"):
            data = self.critique_rollouts(batch, n)
            self.score_attempts(data)
        P = len(data.first) // n
        c2 = data.second_correct.view(P, n)
        kept = select_refinements(c2, data.second_rewards.view(P, n).cpu(), k)
        r = self.combined_group(data.first, data.second, kept, self.tokenizer.pad_token_id)
        kept_rewards = data.second_rewards.view(P, n).gather(1, kept.to(self.device))
        rewards = torch.cat([data.first_rewards.view(P, n), kept_rewards], dim=-1)
        advantages = group_advantages(data.first_rewards.view(P, n), kept_rewards, cfg.advantage,
                                      **dict(cfg.get("advantage_params") or {})).reshape(-1).to(self.device)
        off = torch.tensor(([0.0] * n + [1.0] * k) * P, device=self.device)
        mask = r.completion_mask.float()
        fn, chunks = self._logprob_fn(), self._chunks(len(r))
        with self._timed("logprobs"), torch.no_grad():
            # one update per rollout: π_old is the live policy (ratio 1), so no extra forward for it
            old = (torch.cat([self._rollout_logprobs(self.model, r, c, fn)[0] for c in chunks])
                   if cfg.inner_iterations > 1 else None)
            ref = self._reference_logprobs(r, chunks, fn)
        turn2 = self.refinement_turn(data, P, n, fn)
        opt, sched = self.optimizers(), self.lr_schedulers()
        totals: dict[str, float] = {}
        turn2_totals: dict[str, float] = {}
        with self._timed("update"):
            for _ in range(cfg.inner_iterations):
                opt.zero_grad()
                self._backward_combined(r, chunks, fn, advantages, mask, off, totals, old, ref, 1 / cfg.inner_iterations)
                if turn2 is not None:
                    s2, chunks2, adv2, mask2, off2, old2, ref2 = turn2
                    self._backward_combined(s2, chunks2, fn, adv2, mask2, off2, turn2_totals, old2, ref2,
                                            1 / cfg.inner_iterations, weight=float(cfg.refinement_turn_coef))
                self._optimizer_step(opt, sched)
            self.generator.sync(self.model)
        totals.update({f"turn2_{k}": v for k, v in turn2_totals.items() if k in ("loss", "on_pg_loss", "kl")})
        if turn2 is not None:
            totals["turn2_advantage_abs"] = float(turn2[2].abs().mean())
        kept_correct = c2.gather(1, kept.to(c2.device))
        self.log_attempts(data, totals, {
            "reward_t1": data.first_rewards.mean(), "reward_t2": data.second_rewards.mean(),
            "refine_success_groups": (c2.sum(-1) > 0).float().mean(),  # share of problems with a correct refinement
            "kept_refinement_accuracy": kept_correct.float().mean(), "kept_refinement_reward": kept_rewards.mean(),
            "group_reward": rewards.mean(), "advantage_abs": advantages.abs().mean(),
            "advantage_refinement": advantages.view(P, G)[:, n:].mean(),
            "frac_zero_adv_groups": (rewards.std(-1) == 0).float().mean(),
        }, extra_tokens=0 if turn2 is None else int(data.second.prompt_mask.sum() + data.second.completion_mask.sum()))

    def refinement_turn(self, data: TwoAttempts, P: int, n: int, fn):
        """The second turn's training batch when ``refinement_turn_coef`` > 0, else None: (rollout, chunks,
        advantages, mask, off-policy mask (all 0), old log-probs, reference log-probs) for ``_backward_combined``."""
        cfg = self.cfg
        if not float(cfg.get("refinement_turn_coef", 0.0)):
            return None
        s = data.second  # y2_j sampled after (x, y1_j, c_j): its prompt is already the real context
        adv = refinement_turn_advantages(data.second_rewards.view(P, n), cfg.advantage,
                                         **dict(cfg.get("advantage_params") or {})).reshape(-1).to(self.device)
        chunks = self._chunks(len(s))
        with self._timed("logprobs"), torch.no_grad():
            old = (torch.cat([self._rollout_logprobs(self.model, s, c, fn)[0] for c in chunks])
                   if cfg.inner_iterations > 1 else None)
            ref = self._reference_logprobs(s, chunks, fn) if float(cfg.beta) else None
        return s, chunks, adv, s.completion_mask.float(), torch.zeros(len(s), device=self.device), old, ref

    def _backward_combined(self, r: Rollout, chunks, fn, advantages, mask, off, totals: dict, old=None, ref=None,
                           share: float = 1.0, weight: float = 1.0) -> None:
        """Backpropagate ``weight`` x the Critique-GRPO loss of rollout ``r`` chunk by chunk (chunks add up to the
        whole): the combined groups, or (``refinement_turn``) the refinements in their real context."""
        cfg, n = self.cfg, len(r)
        clip = None if cfg.get("loss_remove_clip", True) else (float(cfg.clip_eps_low), float(cfg.clip_eps_high))
        for c in chunks:
            logprobs, entropy = self._rollout_logprobs(self.model, r, c, fn, with_entropy=True)
            loss, stats = critique_grpo_loss(
                logprobs, logprobs.detach() if old is None else old[c], advantages[c], mask[c], off[c],
                gamma=float(cfg.gamma), max_length=int(cfg.max_new_tokens), clip_eps=clip,
                ref_logprobs=None if ref is None else ref[c], beta=float(cfg.beta), kl_kind=cfg.kl_estimator)
            self.check_finite(loss)
            rows = c.stop - c.start
            self.manual_backward(loss * (weight * rows / n))  # each chunk's loss is a mean over its rows: weight to the whole
            stats["loss"] = loss.detach()
            stats["entropy"] = (entropy * mask[c]).sum() / mask[c].sum().clamp(min=1)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + float(value) * share * rows / n
