"""Online and iterative DPO-style preference methods on top of PreferenceModule.

Every method here reuses the preference family's pieces: the shared sampler (``sample_ids``), the
log-prob path (``token_logprobs`` / ``Reference``), ``PairLogps`` and the pair losses of losses.py, the
judge (``method.judge``, by default the task's: the oracle on task=synthetic_preference), and
PreferenceModule's held-out evaluation, so online and offline runs report the same val/test metrics
(reward_accuracy on held-out pairs, judge_reward, win_rate against the reference, sampled kl).

* ``OnlineDPOModule`` (method=online_dpo): OAIF (Guo et al. 2024). Each step samples ``num_samples`` (2)
  completions per prompt from the current policy (no gradient), the judge labels them, and the pair loss
  ``loss_type`` (default sigmoid = DPO) trains on the fresh pair against the frozen reference.
* ``OFSDPOModule`` (method=ofs_dpo): OFS-DPO (Qi et al. 2024). Two parameter sets, fast (``lr``) and slow
  (``lr * slow_lr_ratio``), each with its own DPO loss, plus the fast-slow chasing regularizer
  (online_losses.ofs_chasing_loss); the leader role goes every ``swap_interval`` steps to the set with the
  lower DPO loss. Pairs come from the dataset stream (``pair_source: offline``, the paper's setting) or are
  sampled and judged as in OAIF (``online``). The fast set is the policy that is evaluated and saved.
* ``HyPOModule`` (method=hypo): HyPO (Song et al. 2024). DPO on the offline pairs plus
  ``kl_coef`` x a REINFORCE (leave-one-out) estimate of KL(pi_theta || pi_ref) on ``kl_samples`` unlabeled
  samples per prompt from pi_theta (online_losses.hypo_kl_surrogate).
* ``DNOModule`` (method=dno): DNO-Prct (Rosset et al. 2024). Iterations of ``iteration_steps`` steps; at
  the start of each the policy is snapshot as pi_t. Each step samples ``num_samples`` (K) completions per
  prompt from pi_t, the judge compares all pairs, the best and worst by win rate form the pair, pairs whose
  win-rate margin is below ``min_margin`` are dropped, and the pair loss trains with pi_t as the reference.
* ``INPOModule`` (method=inpo): INPO (Zhang et al. 2025). The same iterations and pairs as DNO, trained with
  the squared loss of online_losses.inpo_loss (anchors pi_ref and pi_t, coefficients ``eta`` and ``tau``).

Pairs that carry no preference (a tie, or a margin below ``min_margin``) stay in the batch with weight 0, so
the loss is a mean over the kept pairs and every step keeps the same shapes. What was confirmed from which
source, and what was assumed, is in each loss's docstring (online_losses.py) and in conf/method/*.yaml.
"""

from __future__ import annotations

import copy

import torch
from omegaconf import open_dict

from workbench.errors import ConfigError
from workbench.methods.preference.losses import PairLogps, combined_loss
from workbench.methods.preference.module import PreferenceModule
from workbench.methods.preference.online_losses import (best_worst_by_win_rate, hypo_kl_surrogate, inpo_loss,
                                                         masked_mean, ofs_chasing_loss)
from workbench.policy.logprobs import Reference, token_logprobs
from workbench.policy.sampler import Rollout, sample_ids

PAIR_SOURCES = ("online", "offline")


# ---- config checks (also called from workbench/config.py before the SFT warm start) ----------------------
def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) < float("inf")


def _is_count(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_online_fields(m) -> None:
    """ConfigError for the fields this file introduces; only the fields a method's config has are checked."""
    if "num_samples" in m and not _is_count(m.num_samples, 2):
        raise ConfigError("method.num_samples", f"must be a whole number >= 2 (a pair needs two samples per prompt), got {m.num_samples!r}",
                          "e.g. method.num_samples=2")
    if "min_margin" in m and not (_is_number(m.min_margin) and 0 <= m.min_margin <= 1):
        raise ConfigError("method.min_margin", f"must be in [0, 1] (a difference of judge win rates), got {m.min_margin!r}",
                          "e.g. method.min_margin=0 (drop only ties) or 0.5 (keep clear wins)")
    if "iteration_steps" in m and not _is_count(m.iteration_steps, 1):
        raise ConfigError("method.iteration_steps", f"must be a whole number >= 1, got {m.iteration_steps!r}",
                          "e.g. method.iteration_steps=50 (steps between snapshots of pi_t)")
    if "slow_lr_ratio" in m and not (_is_number(m.slow_lr_ratio) and 0 < m.slow_lr_ratio <= 1):
        raise ConfigError("method.slow_lr_ratio", f"must be in (0, 1] (the slow set's lr is lr * ratio), got {m.slow_lr_ratio!r}",
                          "e.g. method.slow_lr_ratio=0.5")
    if "chase_weight" in m and not (_is_number(m.chase_weight) and m.chase_weight >= 0):
        raise ConfigError("method.chase_weight", f"must be >= 0, got {m.chase_weight!r}",
                          "e.g. method.chase_weight=0.1 (0: two plain DPO runs)")
    if "swap_interval" in m and not _is_count(m.swap_interval, 1):
        raise ConfigError("method.swap_interval", f"must be a whole number >= 1, got {m.swap_interval!r}", "e.g. method.swap_interval=10")
    if "pair_source" in m and m.pair_source not in PAIR_SOURCES:
        raise ConfigError("method.pair_source", f"unknown '{m.pair_source}'", f"use one of {list(PAIR_SOURCES)}")
    if "kl_coef" in m and not (_is_number(m.kl_coef) and m.kl_coef >= 0):
        raise ConfigError("method.kl_coef", f"must be >= 0, got {m.kl_coef!r}", "e.g. method.kl_coef=0.1 (0: plain DPO)")
    if "kl_samples" in m and not _is_count(m.kl_samples, 1):
        raise ConfigError("method.kl_samples", f"must be a whole number >= 1, got {m.kl_samples!r}",
                          "e.g. method.kl_samples=2 (>= 2 uses the leave-one-out baseline)")
    if "eta" in m and not (_is_number(m.eta) and m.eta > 0):
        raise ConfigError("method.eta", f"must be > 0, got {m.eta!r}", "e.g. method.eta=2.0")
    if "tau" in m and not (_is_number(m.tau) and m.tau >= 0):
        raise ConfigError("method.tau", f"must be >= 0, got {m.tau!r}", "e.g. method.tau=0.1")
    if "eta" in m and "tau" in m and _is_number(m.eta) and _is_number(m.tau) and m.eta * m.tau > 1:
        raise ConfigError("method.tau", f"eta * tau = {m.eta * m.tau:g} > 1 gives pi_t a negative weight in INPO's target",
                          "choose eta * tau <= 1")
    if m.get("reference", "live") != "live":
        raise ConfigError("method.reference", "online samples are new every step, so their reference log-probs cannot be precomputed",
                          "set method.reference=live")
    names = [m.loss_type] if isinstance(m.get("loss_type"), str) else list(m.get("loss_type") or [])
    if "kto" in names:
        raise ConfigError("method.loss_type", "kto trains on unpaired examples, not on judged pairs", "use a pair loss, e.g. sigmoid")
    labels_online = "num_samples" in m and m.get("pair_source", "online") == "online"
    if labels_online and not m.get("judge"):
        raise ConfigError("method.judge", f"is null but '{m.get('name')}' labels its samples with a judge",
                          "set method.judge={name: oracle} (synthetic task) or {name: reward_model, path: ...}")


def _subset(lp: PairLogps, keep: torch.Tensor) -> PairLogps:
    return PairLogps(*(None if t is None else t[keep] for t in (lp.chosen, lp.rejected, lp.chosen_tokens, lp.rejected_tokens,
                                                                lp.ref_chosen, lp.ref_rejected)))


class OnlinePreferenceModule(PreferenceModule):
    """Shared machinery: sample from a model, judge every pair per prompt, build the pair batch, masked loss, logs."""

    def __init__(self, policy, task, method, trainer_cfg=None):
        check_online_fields(method)
        super().__init__(policy, task, method, trainer_cfg)
        if self.reference is None:  # reference-free loss with log_kl off: the KL and win rate still need one
            self.reference = Reference(self.model, use_adapters_off=hasattr(self.model, "disable_adapter"))
        if self.judge is None and self._labels_online():
            raise ConfigError("method.judge", f"is null but '{method.name}' labels its samples with a judge",
                              "set method.judge={name: oracle} (synthetic task) or {name: reward_model, path: ...}")

    def _labels_online(self) -> bool:
        return True

    # ---- sampling and judging ---------------------------------------------------------------------------
    @torch.no_grad()
    def _sample(self, model, rows: list[dict], n: int) -> Rollout:
        """n completions per prompt from ``model``; rows i*n..i*n+n-1 belong to prompt i."""
        ids, mask = self.encoder.prompts([r["prompt"] for r in rows])
        cfg = self.cfg
        return sample_ids(model, self.tokenizer, ids.to(self.device), mask.to(self.device), n, int(cfg.max_new_tokens),
                          float(cfg.get("temperature", 1.0)), float(cfg.get("top_p", 1.0)))

    @staticmethod
    def _fields(rows: list[dict], n: int) -> dict[str, list]:
        """What the judge reads besides prompt and completion (the oracle's answer), repeated n per prompt."""
        return {k: [r[k] for r in rows for _ in range(n)] for k in ("answer",) if k in rows[0]}

    @torch.no_grad()
    def _judge(self, rows: list[dict], rollout: Rollout, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, k, k) preference probabilities P(y_i > y_j) from the judge, and the (B*k,) judge scores."""
        prompts = [r["prompt"] for r in rows for _ in range(k)]
        return self.judge.group_preferences(prompts, rollout.texts, k, **self._fields(rows, k))

    @staticmethod
    def _pair_batch(rollout: Rollout, k: int, chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
        """Rows (x_i, y_chosen,i), (x_i, y_rejected,i), ... the layout of PairEncoder.pairs."""
        base = torch.arange(len(chosen)) * k
        rows = torch.stack([base + chosen.cpu(), base + rejected.cpu()], 1).flatten()
        sel = rollout.select(rows)
        return {"prompt_ids": sel.prompt_ids, "prompt_mask": sel.prompt_mask,
                "completion_ids": sel.completion_ids, "completion_mask": sel.completion_mask}

    def _online_pairs(self, rows: list[dict], model, k: int) -> tuple[dict, torch.Tensor, dict, Rollout]:
        """Sample k completions per prompt from ``model``, judge them, pair the best and worst by win rate."""
        with self._timed("sample"):
            rollout = self._sample(model, rows, k)
        with self._timed("judge"):
            prefs, scores = self._judge(rows, rollout, k)
        best, worst, margin = best_worst_by_win_rate(prefs)
        keep = (margin > 0) & (margin >= float(self.cfg.get("min_margin", 0.0)))
        stats = {
            "judge_reward": scores.mean(),  # the judge's mean score of this step's samples
            "label_mean": prefs[:, 0, 1].mean(),  # P(first sample > second): 0.5 when labels are unbiased
            "pair_margin": margin[keep].mean() if keep.any() else torch.tensor(0.0),  # judge win-rate margin of kept pairs
            "kept_frac": keep.float().mean(),
            "completion_length": rollout.lengths.float().mean(),
            "truncated_frac": rollout.truncated.float().mean(),
        }
        return self._pair_batch(rollout, k, best, worst), keep.to(self.device), stats, rollout

    # ---- log-probs and losses ----------------------------------------------------------------------------
    def _sums(self, model, batch: dict) -> torch.Tensor:
        """Summed log-probs of the batch's completions under ``model`` (gradient if the model has one)."""
        lp, _ = self._logprob_fn()(model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], batch["completion_mask"])
        return (lp * batch["completion_mask"]).sum(-1)

    @torch.no_grad()
    def _frozen_sums(self, model, batch: dict) -> torch.Tensor:
        return self._sums(model, batch)

    def _pair_loss(self, lp: PairLogps, keep: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """sum_k w_k * (mean over kept pairs of loss_k)."""
        return combined_loss(lp, self.loss_types, self.loss_weights, self.loss_params, keep)

    @staticmethod
    def _kl(sums: torch.Tensor, ref_sums: torch.Tensor | None) -> torch.Tensor | None:
        """Mean summed log pi_theta/pi_ref over completions: a KL(pi_theta || pi_ref) estimate when they come from pi_theta."""
        return None if ref_sums is None else (sums.detach() - ref_sums).mean()

    # ---- logging -------------------------------------------------------------------------------------------
    def _log_step(self, loss: torch.Tensor, lp: PairLogps | None, keep: torch.Tensor | None, stats: dict,
                  parts: dict | None = None) -> None:
        n = len(keep) if keep is not None else 1
        self.log("train/loss", loss.detach(), on_step=True, prog_bar=True, batch_size=n)
        if lp is not None and keep is not None and keep.any():
            self._log_pairs("train", _subset(lp, keep), int(keep.sum()), on_step=True)
        if parts and len(parts) > 1:
            stats = {**stats, **{f"loss_{k}": v for k, v in parts.items()}}
        stats = {k: v for k, v in stats.items() if v is not None}
        stats.update({f"time_{k}": v for k, v in self._times.items()})
        self.log_dict({f"train/{k}": float(v) for k, v in stats.items()}, on_step=True, batch_size=n)

    @staticmethod
    def _tokens(*batches) -> int:
        return int(sum(int(b["prompt_mask"].sum() + b["completion_mask"].sum()) for b in batches))


# ---- OAIF ------------------------------------------------------------------------------------------------
class OnlineDPOModule(OnlinePreferenceModule):
    """OAIF: fresh on-policy pairs each step, labelled by the judge, a pair loss against the frozen reference."""

    def training_step(self, batch, batch_idx):
        self._times = {}
        pairs, keep, stats, rollout = self._online_pairs(batch["rows"], self.model, int(self.cfg.num_samples))
        with self._timed("forward"):
            lp, _ = self.pair_logps(pairs)
            loss, parts = self._pair_loss(lp, keep)
        self.check_finite(loss)
        if lp.ref_chosen is not None:
            stats["kl"] = self._kl(torch.cat([lp.chosen, lp.rejected]), torch.cat([lp.ref_chosen, lp.ref_rejected]))
        self._log_step(loss, lp, keep, stats, parts)
        self.count_tokens(self._tokens(pairs) * 2 + int(rollout.completion_mask.sum()))
        return loss


# ---- OFS-DPO ------------------------------------------------------------------------------------------------
class OFSDPOModule(OnlinePreferenceModule):
    """Fast (the policy) and slow parameter sets, each with DPO, plus the chasing regularizer between them."""

    def __init__(self, policy, task, method, trainer_cfg=None):
        super().__init__(policy, task, method, trainer_cfg)
        self.slow = copy.deepcopy(self.model)  # the second parameter set (with LoRA: a second adapter on a copy of the base)
        self.fast_leads = True  # the fast set plays the leader ("F") role until the first swap
        self._chase = [0.0, 0.0, 0]  # summed DPO losses of fast and slow since the last swap, steps

    def _labels_online(self) -> bool:
        return self.cfg.get("pair_source", "offline") == "online"

    def configure_optimizers(self):
        conf = super().configure_optimizers()
        opt, factor = conf["optimizer"], conf["lr_scheduler"]["scheduler"].lr_lambdas[0]
        slow = [p for p in self.slow.parameters() if p.requires_grad]
        opt.add_param_group({"params": slow, "lr": float(self.cfg.lr) * float(self.cfg.slow_lr_ratio)})
        # a fresh scheduler so the slow group gets the same warmup; the fast group keeps its initial_lr
        conf["lr_scheduler"]["scheduler"] = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return conf

    def training_step(self, batch, batch_idx):
        self._times = {}
        stats = {}
        if self._labels_online():
            pairs, keep, stats, _ = self._online_pairs(batch["rows"], self.model, int(self.cfg.num_samples))
        else:
            pairs = {k: batch[k] for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")}
            keep = torch.ones(pairs["prompt_ids"].shape[0] // 2, dtype=torch.bool, device=self.device)
        with self._timed("forward"):
            fast, _ = self.pair_logps(pairs)
            sums = self._sums(self.slow, pairs)
            slow = PairLogps(sums[0::2], sums[1::2], fast.chosen_tokens, fast.rejected_tokens, fast.ref_chosen, fast.ref_rejected)
            loss_fast, _ = self._pair_loss(fast, keep)
            loss_slow, _ = self._pair_loss(slow, keep)
            beta = self.loss_params["beta"]
            m_fast, m_slow = beta * fast.margin(), beta * slow.margin()
            leader, chaser = (m_fast, m_slow) if self.fast_leads else (m_slow, m_fast)
            chase = masked_mean(ofs_chasing_loss(leader, chaser, float(self.cfg.chase_weight)), keep)
            loss = loss_fast + loss_slow + chase
        self.check_finite(loss)
        loss_fs = masked_mean(-torch.nn.functional.logsigmoid(leader - chaser).detach(), keep)  # DPO between the sets
        stats.update(loss_fast=loss_fast.detach(), loss_slow=loss_slow.detach(), loss_fs=loss_fs,
                     fast_leads=float(self.fast_leads), margin_fast_minus_slow=masked_mean((m_fast - m_slow).detach(), keep),
                     kl=self._kl(torch.cat([fast.chosen, fast.rejected]), torch.cat([fast.ref_chosen, fast.ref_rejected])))
        self._log_step(loss, fast, keep, stats)
        self._update_roles(float(loss_fast), float(loss_slow))
        self.count_tokens(self._tokens(pairs) * 4)
        return loss

    def _update_roles(self, loss_fast: float, loss_slow: float) -> None:
        """Every swap_interval steps the leader role goes to the set with the lower mean DPO loss over the interval."""
        self._chase = [self._chase[0] + loss_fast, self._chase[1] + loss_slow, self._chase[2] + 1]
        if self._chase[2] >= int(self.cfg.swap_interval):
            self.fast_leads = self._chase[0] <= self._chase[1]
            self._chase = [0.0, 0.0, 0]

    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        checkpoint["workbench_ofs"] = {"fast_leads": self.fast_leads, "chase": list(self._chase)}

    def on_load_checkpoint(self, checkpoint):
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("workbench_ofs")
        if state:
            self.fast_leads, self._chase = bool(state["fast_leads"]), list(state["chase"])


# ---- HyPO ---------------------------------------------------------------------------------------------------
class HyPOModule(OnlinePreferenceModule):
    """DPO on the offline pairs + kl_coef * reverse-KL estimate on unlabeled samples from the policy."""

    def _labels_online(self) -> bool:
        return False

    def training_step(self, batch, batch_idx):
        self._times = {}
        with self._timed("forward"):
            lp, _ = self.pair_logps(batch)
            dpo, parts = combined_loss(lp, self.loss_types, self.loss_weights, self.loss_params)
        k = int(self.cfg.kl_samples)
        with self._timed("sample"):
            rollout = self._sample(self.model, batch["rows"], k)
        online = {"prompt_ids": rollout.prompt_ids, "prompt_mask": rollout.prompt_mask,
                  "completion_ids": rollout.completion_ids, "completion_mask": rollout.completion_mask}
        with self._timed("forward"):
            # groups of k samples, not pairs: the plain forward (the shared-prefix one packs groups of 2)
            args = (online["prompt_ids"], online["prompt_mask"], online["completion_ids"], online["completion_mask"])
            lp_online, _ = token_logprobs(self.model, *args)
            sums = (lp_online * online["completion_mask"]).sum(-1)
            ref = self.reference.logprobs(*args)
            kl_term, kl = hypo_kl_surrogate(sums, (ref * online["completion_mask"]).sum(-1), k)
            loss = dpo + float(self.cfg.kl_coef) * kl_term
        self.check_finite(loss)
        stats = {"loss_dpo": dpo.detach(), "kl": kl, "kl_term": kl_term.detach(),
                 "completion_length": rollout.lengths.float().mean()}
        if self.judge is not None:  # optional: the judge's view of the (unlabeled) online samples
            rows = batch["rows"]
            stats["judge_reward"] = self.judge.score([r["prompt"] for r in rows for _ in range(k)], rollout.texts,
                                                     **self._fields(rows, k)).float().mean()
        keep = torch.ones(len(lp.chosen), dtype=torch.bool, device=self.device)
        self._log_step(loss, lp, keep, stats, parts)
        self.count_tokens(self._tokens(batch) * 2 + self._tokens(online) * 2)
        return loss


# ---- DNO-Prct and INPO: iterations against a snapshot pi_t ------------------------------------------------
class IterativePreferenceModule(OnlinePreferenceModule):
    """pi_t = a frozen snapshot of the policy, refreshed every ``iteration_steps`` steps; pairs are sampled from it."""

    def __init__(self, policy, task, method, trainer_cfg=None):
        super().__init__(policy, task, method, trainer_cfg)
        self.anchor = copy.deepcopy(self.model).eval()  # registered: checkpoints carry pi_t, so a resumed run keeps it
        self.anchor.requires_grad_(False)
        self._anchor_step = 0

    def train(self, mode: bool = True):
        super().train(mode)
        if hasattr(self, "anchor"):  # pi_t never trains (no dropout noise in its log-probs)
            self.anchor.eval()
        return self

    def _refresh_anchor(self) -> None:
        step = self.global_step
        if step > 0 and step % int(self.cfg.iteration_steps) == 0 and step != self._anchor_step:
            self.anchor.load_state_dict(self.model.state_dict())
            self._anchor_step = step

    def _iteration_pairs(self, batch) -> tuple[dict, torch.Tensor, dict, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pairs from pi_t; returns (pairs, keep, stats, policy sums, tokens, pi_t sums, pi_ref sums)."""
        self._times = {}
        self._refresh_anchor()
        pairs, keep, stats, _ = self._online_pairs(batch["rows"], self.anchor, int(self.cfg.num_samples))
        with self._timed("forward"):
            sums, tokens, _ = self._policy_logps(pairs)
            anchor = self._frozen_sums(self.anchor, pairs)
            ref = self._reference_logps(pairs)
        stats["kl"] = self._kl(sums, ref)  # samples come from pi_t, not pi_theta: a KL estimate only near an iteration start
        stats["logratio_anchor"] = (sums.detach() - anchor).mean()  # mean log pi_theta/pi_t on the pairs
        stats["iteration"] = float(self.global_step // int(self.cfg.iteration_steps))
        self.count_tokens(self._tokens(pairs) * 4)
        return pairs, keep, stats, sums, tokens, anchor, ref


class DNOModule(IterativePreferenceModule):
    """DNO-Prct: the pair loss (default DPO, beta = the paper's eta) with pi_t as the reference, large-margin pairs only."""

    def training_step(self, batch, batch_idx):
        pairs, keep, stats, sums, tokens, anchor, _ = self._iteration_pairs(batch)
        lp = PairLogps(sums[0::2], sums[1::2], tokens[0::2], tokens[1::2], anchor[0::2], anchor[1::2])
        loss, parts = self._pair_loss(lp, keep)
        self.check_finite(loss)
        self._log_step(loss, lp, keep, stats, parts)  # train/reward_* are against pi_t here, what the loss sees
        return loss


class INPOModule(IterativePreferenceModule):
    """INPO: (h_t - eta/2)^2 on pairs from pi_t, h_t anchored on pi_ref (weight eta*tau) and pi_t (1 - eta*tau)."""

    def __init__(self, policy, task, method, trainer_cfg=None):
        if "loss_type" not in method:  # INPO has its own loss; held-out metrics rank pairs by beta*h as IPO does
            with open_dict(method):
                method.loss_type = "ipo"
        super().__init__(policy, task, method, trainer_cfg)

    def training_step(self, batch, batch_idx):
        pairs, keep, stats, sums, tokens, anchor, ref = self._iteration_pairs(batch)
        losses = inpo_loss(sums[0::2] - sums[1::2], ref[0::2] - ref[1::2], anchor[0::2] - anchor[1::2],
                           float(self.cfg.eta), float(self.cfg.tau))
        loss = masked_mean(losses, keep)
        self.check_finite(loss)
        lp = PairLogps(sums[0::2], sums[1::2], tokens[0::2], tokens[1::2], ref[0::2], ref[1::2])
        self._log_step(loss, lp, keep, stats)  # train/reward_* are against pi_ref
        return loss
