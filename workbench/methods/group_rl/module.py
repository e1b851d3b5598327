"""Group RL, one step: sample G completions per prompt -> rewards -> advantages -> policy-loss update.

Every variant (GRPO, Dr. GRPO, DAPO, RLOO, REINFORCE++, GSPO, SEED-GRPO, DisCO, HAPO, ...) is this loop
with other registry entries chosen by config: ``advantage`` (advantages.py), ``policy_loss`` and
``loss_agg`` / ``importance_level`` (losses.py), ``rewards`` (workbench/rewards), plus the switches
``dynamic_sampling``, ``mask_truncated`` (overlong filtering), ``kl_in_reward`` and ``shared_prefix``.
"""

from __future__ import annotations


import torch

from workbench.methods.base import PolicyModule
from workbench.methods.distributed import global_max, global_mean, global_sum, rank_share, world_size
from workbench.methods.group_rl.advantages import ADVANTAGES
from workbench.methods.group_rl.losses import POLICY_LOSSES, kl_estimate
from workbench.methods.group_rl.rollouts import GroupBatch, collect_with_dynamic_sampling
from workbench.policy.sampler import Rollout
from workbench.policy.generation import build_generator
from workbench.policy.logprobs import Reference, token_logprobs
from workbench.policy.shared_prefix import check_shared_prefix_support, shared_prefix_token_logprobs
from workbench.rewards import RewardSet
from workbench.rewards.judges import build_judge
from workbench.tasks.base import normalize_number

# train/* metrics remembered every step; at the end of training the mean of the first and of the last
# ``method.summary_window`` logged values of each is logged once (train_early/, train_late/, train_growth/ = late - early),
# so a claim can compare smoothed final values and drifts instead of one noisy last step
SUMMARY_KEYS = ("reward", "accuracy", "entropy", "completion_length", "completion_length_correct", "completion_length_incorrect")


def window_summary(history: dict[str, list[float]], window: int) -> dict[str, float]:
    """Mean of the first and of the last ``window`` values of each metric's history (fewer when it has fewer)."""
    out = {}
    for key, values in history.items():
        if window < 1 or not values:
            continue
        k = min(window, len(values))
        early, late = sum(values[:k]) / k, sum(values[-k:]) / k
        out.update({f"train_early/{key}": early, f"train_late/{key}": late, f"train_growth/{key}": late - early})
    return out


class GroupRLModule(PolicyModule):
    family = "group_rl"

    def __init__(self, policy, task, method, trainer_cfg=None):
        super().__init__(policy, task, method, trainer_cfg)
        self.automatic_optimization = False  # mu inner updates per rollout
        self.rewards = RewardSet(method.rewards, task, aggregation=method.get("reward_aggregation", "weighted_sum"))
        self.generator = build_generator(method.get("generation"))
        self.reference = None
        if method.beta > 0 or method.log_kl:
            self.reference = Reference(self.model, use_adapters_off=hasattr(self.model, "disable_adapter"))
        # a judge (method.judge, e.g. SPO's and SALSA's oracle) adds held-out win rate vs the reference to evaluation
        self.judge = build_judge(method.judge, task) if method.get("judge") else None
        if method.get("shared_prefix", False):
            self._check_shared_prefix_support()
        self.history: dict[str, list[float]] = {key: [] for key in SUMMARY_KEYS}  # see window_summary

    def _check_shared_prefix_support(self) -> None:
        check_shared_prefix_support(self.model)

    def on_fit_start(self):
        if self.reference is not None:
            self.reference.to(self.device)

    # ---- rollouts ---------------------------------------------------------------------------------
    def _score(self, batch: dict) -> GroupBatch:
        cfg, G = self.cfg, self.cfg.group_size
        rollout = self.generator(self.model, self.tokenizer, self.formatted(batch["prompt"]), n=G,
                                 max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
        fields = {k: [v for v in vals for _ in range(G)] for k, vals in batch.items()}
        prompts = fields.pop("prompt")
        rewards, parts = self.rewards(prompts, rollout.texts, group_size=G,
                                      completion_lengths=rollout.lengths.tolist(), **fields)
        correct = parts.get("correctness")  # the verifier already ran for that reward; math-verify is not free
        if correct is None:
            correct = torch.tensor([float(self.task.verify(t, a)) for t, a in zip(rollout.texts, fields["answer"])])
        return GroupBatch(rollout, rewards, parts, correct, {"prompt": prompts, **fields}, G)

    def _fresh_prompts(self, round_: int) -> dict:
        """Extra prompts for dynamic sampling, a function of (seed, step, round, rank) so a resumed run draws the same."""
        split = self.task.split("train")
        gen = torch.Generator().manual_seed(torch.initial_seed() % 2**31 * 1_000_003 + self.global_step * 101 + round_ * 7 + self.global_rank)
        rows = split.select(torch.randperm(len(split), generator=gen)[: self.cfg.batch_size // max(1, self.trainer.world_size)].tolist())
        return {k: list(rows[k]) for k in rows.column_names}

    def _collect(self, batch: dict) -> GroupBatch:
        ds = self.cfg.get("dynamic_sampling") or {}
        if not ds.get("enabled", False):
            return self._score(batch)
        rounds = iter(range(1, 10**9))
        return collect_with_dynamic_sampling(batch, self._score, lambda: self._fresh_prompts(next(rounds)),
                                             int(ds.get("max_rounds", 3)), self.tokenizer.pad_token_id)

    def _cluster_ids(self, data: GroupBatch) -> torch.Tensor:
        """Semantic clusters for SEED-GRPO: completions with the same normalized answer share a label."""
        labels = []
        for g in range(data.num_groups):
            seen: dict[str, int] = {}
            for text in data.rollout.texts[g * data.group_size : (g + 1) * data.group_size]:
                raw = self.task.extract_answer(text)
                key = normalize_number(raw) or (raw.strip() if raw else f"<none:{len(seen)}>")  # unparsed: its own cluster
                labels.append(seen.setdefault(key, len(seen)))
        return torch.tensor(labels).view(data.num_groups, data.group_size)

    # ---- log-probs (one path, optionally with the prompt encoded once per group) ----------------
    def _logprob_fn(self):
        if self.cfg.get("shared_prefix", False):
            G = self.cfg.group_size
            return lambda model, *args, **kw: shared_prefix_token_logprobs(model, *args, group_size=G, **kw)
        return token_logprobs

    def _chunks(self, n: int, whole: int = 1) -> list[slice]:
        """Minibatches of ``method.minibatch_size`` rows, rounded down to whole blocks of ``whole`` rows (>= one)."""
        mb = self.cfg.minibatch_size or n
        mb = max(whole, mb // whole * whole)
        return [slice(i, min(i + mb, n)) for i in range(0, n, mb)]

    # ---- the step ---------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        cfg, G = self.cfg, self.cfg.group_size
        self._times = {}
        with self._timed("generation"):
            data = self._collect(batch)
        r = data.rollout
        n = len(r)
        mask = r.completion_mask.float()
        loss_mask = mask * (~r.truncated).float().unsqueeze(-1) if cfg.get("mask_truncated", False) else mask
        logprob_fn, chunks = self._logprob_fn(), self._chunks(n)

        with self._timed("logprobs"), torch.no_grad():
            # with one update per rollout pi_old == pi, so the ratio's value is 1 and we reuse the live log-probs
            needs_old = cfg.inner_iterations > 1 or cfg.get("kl_in_reward")
            old = torch.cat([self._rollout_logprobs(self.model, r, c, logprob_fn)[0] for c in chunks]) if needs_old else None
            ref = self._reference_logprobs(r, chunks, logprob_fn)

        rewards = data.rewards.to(self.device)
        if cfg.get("kl_in_reward", False) and ref is not None:
            # RLOO / REINFORCE++ style: r_i <- r_i - beta * sum_t KL_t, the KL then stays out of the loss
            rewards = rewards - cfg.beta * (kl_estimate(old, ref, "k1") * mask).sum(-1)
        advantages = self._advantages(data, rewards, mask)

        loss_kwargs = self._loss_kwargs(cfg.max_new_tokens, loss_mask, beta=0.0 if cfg.get("kl_in_reward", False) else cfg.beta)
        opt, sched = self.optimizers(), self.lr_schedulers()
        totals: dict[str, float] = {}
        with self._timed("update"):
            for _ in range(cfg.inner_iterations):
                opt.zero_grad()
                self._backward_rollout(r, chunks, logprob_fn, advantages, loss_mask, mask, loss_kwargs, totals,
                                       old=old, ref=ref, labels=data.correct.to(self.device), share=1 / cfg.inner_iterations)
                self._optimizer_step(opt, sched)
            self.generator.sync(self.model)
        self._log_step(data, rewards, advantages, totals, mask)

    def _advantages(self, data: GroupBatch, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,) per sequence or (B, T) per token. Groups are whole on a rank (each rank samples G completions of
        its own prompts), so only batch-wide statistics need the other ranks' rewards."""
        cfg, n = self.cfg, len(data.rollout)
        ctx = dict(cfg.get("advantage_params") or {})
        if cfg.advantage == "seed_grpo":
            ctx["cluster_ids"] = self._cluster_ids(data)
        if world_size() > 1:  # one process keeps the estimators' own local reductions, bit for bit
            ctx["batch_sum"] = global_sum
        advantages = ADVANTAGES[cfg.advantage](rewards.view(-1, cfg.group_size), mask=mask, **ctx)
        return advantages.reshape(n, -1).squeeze(-1) if advantages.dim() == 2 else advantages.reshape(n, -1)

    # ---- the update, shared with subclasses that train on several rollouts per step (BRPO) -----------
    def _rollout_logprobs(self, model, r: Rollout, c: slice, fn, with_entropy: bool = False):
        return fn(model, r.prompt_ids[c], r.prompt_mask[c], r.completion_ids[c], r.completion_mask[c],
                  temperature=self.cfg.temperature, with_entropy=with_entropy)

    def _reference_logprobs(self, r: Rollout, chunks: list[slice], fn) -> torch.Tensor | None:
        if self.reference is None:
            return None
        return torch.cat([self.reference.logprobs(r.prompt_ids[c], r.prompt_mask[c], r.completion_ids[c], r.completion_mask[c],
                                                  self.cfg.temperature, fn=fn) for c in chunks])

    def _loss_kwargs(self, max_length: int, loss_mask: torch.Tensor, beta: float) -> dict:
        cfg = self.cfg
        kwargs = dict(beta=beta, eps_low=cfg.clip_eps_low, eps_high=cfg.clip_eps_high, kl_kind=cfg.kl_estimator,
                      agg=cfg.loss_agg, max_length=max_length, importance_level=cfg.get("importance_level", "token"),
                      group_size=cfg.group_size)
        kwargs.update(cfg.get("loss_params") or {})  # e.g. DisCO's own beta (its KL constraint) replaces the KL coefficient
        if cfg.loss_agg == "token_mean":  # DAPO: one token count for the whole rollout, so minibatches add up to its loss
            # under DDP the global batch's count (per rank: its share), else DDP's mean of per-rank token means
            # would weight a rank of short completions more
            kwargs["token_normalizer"] = rank_share(loss_mask.sum()).clamp(min=1)
        return kwargs

    def _backward_rollout(self, r: Rollout, chunks: list[slice], fn, advantages, loss_mask, mask, loss_kwargs: dict,
                          totals: dict, old=None, ref=None, labels=None, scale: float = 1.0, share: float = 1.0,
                          prefix: str = "") -> None:
        """Backpropagate ``scale`` x the rollout's policy loss chunk by chunk; add its stats (x ``share``) to ``totals``."""
        loss_fn = POLICY_LOSSES[self.cfg.get("policy_loss", "clipped")]
        n = len(r)
        # per-sequence means divide by the global row count's share: ranks differ when dynamic sampling falls short
        rows_share = rank_share(n)
        token_mean = "token_normalizer" in loss_kwargs
        for c in chunks:
            logprobs, entropy = self._rollout_logprobs(self.model, r, c, fn, with_entropy=True)
            loss, stats = loss_fn(
                logprobs, logprobs.detach() if old is None else old[c], advantages[c], loss_mask[c],
                ref_logprobs=None if ref is None else ref[c], labels=None if labels is None else labels[c], **loss_kwargs,
            )
            self.check_finite(loss)
            rows = c.stop - c.start
            weight = 1.0 if token_mean else rows / rows_share  # per-chunk means -> the rollout mean
            if scale:
                self.manual_backward(loss * weight * scale)
            stats["loss"] = loss.detach() * weight * n / rows
            stats["entropy"] = (entropy * mask[c]).sum() / mask[c].sum().clamp(min=1)
            for key, value in stats.items():
                totals[prefix + key] = totals.get(prefix + key, 0.0) + float(value) * share * rows / n

    def _optimizer_step(self, opt, sched) -> None:
        if self.cfg.max_grad_norm:
            self.clip_gradients(opt, gradient_clip_val=self.cfg.max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
        sched.step()

    def _log_step(self, data: GroupBatch, rewards, advantages, totals, mask) -> None:
        r, G = data.rollout, data.group_size
        groups = rewards.view(-1, G)
        if "loss" in totals:  # what was backpropagated is each rank's share: their mean is the global batch's loss
            totals = {**totals, "loss": global_mean(totals["loss"])}
        # prompts this rank sampled (dynamic sampling: with its extra rounds), summed and maxed over ranks,
        # so a DDP run shows that each rank generated only its share of the global batch
        sampled = float(data.stats.get("groups_sampled", data.num_groups))
        lengths = r.lengths.float()
        correct = data.correct.bool()
        log = dict(
            reward_std=groups.std(-1).mean(), accuracy=data.correct.mean(),
            frac_zero_std_groups=(groups.std(-1) == 0).float().mean(),
            prompts_sampled=global_sum(sampled), prompts_sampled_rank_max=global_max(sampled),
            advantage_abs=advantages.abs().mean() if advantages.dim() == 1 else (advantages.abs() * mask).sum() / mask.sum().clamp(min=1),
            completion_length=lengths.mean(), truncated_frac=r.truncated.float().mean(),
            **{k: v for k, v in totals.items() if k != "kl" or self.reference is not None},
            **{f"time_{k}": v for k, v in self._times.items()},
            **{f"dynamic_sampling/{k}": v for k, v in data.stats.items()},
        )
        if correct.any():
            log["completion_length_correct"] = lengths[correct].mean()
        if (~correct).any():
            log["completion_length_incorrect"] = lengths[~correct].mean()
        if len(data.parts) > 1:
            for name, values in data.parts.items():
                log[f"reward/{name}"] = values.mean()
        P = data.num_groups
        for key, value in {**log, "reward": rewards.mean()}.items():
            if key in self.history:
                self.history[key].append(float(value))
        self.log("train/reward", rewards.mean(), prog_bar=True, on_step=True, batch_size=P)
        self.log_dict({f"train/{k}": float(v) for k, v in log.items()}, on_step=True, batch_size=P)
        tokens = int(r.prompt_mask.sum() + mask.sum()) * (1 + self.cfg.inner_iterations)
        self.count_tokens(tokens)

    def on_train_end(self):
        """The early / late window means of SUMMARY_KEYS, logged once at the last step (and into the run's summary)."""
        summary = window_summary(self.history, int(self.cfg.get("summary_window") or 0))
        if summary and self.logger is not None:
            self.logger.log_metrics(summary, step=self.global_step)
        for key, value in summary.items():
            self.trainer.callback_metrics[key] = torch.tensor(value)

    # ---- stateful rewards (HAPO's per-prompt history) and the metric history travel with the checkpoint ----
    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        checkpoint["workbench_reward_state"] = self.rewards.state_dict()
        checkpoint["workbench_train_history"] = {key: list(values) for key, values in self.history.items()}

    def on_load_checkpoint(self, checkpoint):
        super().on_load_checkpoint(checkpoint)
        if "workbench_reward_state" in checkpoint:
            self.rewards.load_state_dict(checkpoint["workbench_reward_state"])
        for key, values in checkpoint.get("workbench_train_history", {}).items():
            self.history[key] = list(values)
