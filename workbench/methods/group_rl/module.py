"""Group RL, one step: sample G completions per prompt -> rewards -> group advantages -> clipped update.

The pieces are chosen by config (``advantage``, ``loss_agg``, ``kl_estimator``), so variants swap a
registry entry, not this loop.
"""

from __future__ import annotations

import torch

from workbench.methods.base import PolicyModule
from workbench.methods.group_rl.advantages import ADVANTAGES
from workbench.methods.group_rl.losses import grpo_loss
from workbench.policy.logprobs import Reference, token_logprobs
from workbench.policy.sampler import Rollout, sample
from workbench.rewards import RewardSet


class GroupRLModule(PolicyModule):
    family = "group_rl"

    def __init__(self, policy, task, method, trainer_cfg=None):
        super().__init__(policy, task, method, trainer_cfg)
        self.automatic_optimization = False  # mu inner updates per rollout
        self.rewards = RewardSet(method.rewards, task)
        self.reference = None
        if method.beta > 0 or method.log_kl:
            self.reference = Reference(self.model, use_adapters_off=hasattr(self.model, "disable_adapter"))

    def on_fit_start(self):
        if self.reference is not None:
            self.reference.to(self.device)

    def _logprobs(self, rollout: Rollout, rows: slice, with_entropy: bool = False):
        return token_logprobs(
            self.model, rollout.prompt_ids[rows], rollout.prompt_mask[rows], rollout.completion_ids[rows],
            rollout.completion_mask[rows], temperature=self.cfg.temperature, with_entropy=with_entropy,
        )

    def training_step(self, batch, batch_idx):
        cfg, G = self.cfg, self.cfg.group_size
        prompts = batch["prompt"]
        rollout = sample(
            self.model, self.tokenizer, self.formatted(prompts), n=G,
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
        )
        fields = {k: [v for v in vals for _ in range(G)] for k, vals in batch.items()}
        rewards, parts = self.rewards(fields.pop("prompt"), rollout.texts, **fields)
        advantages = ADVANTAGES[cfg.advantage](rewards.view(-1, G)).reshape(-1).to(self.device)
        mask = rollout.completion_mask.float()

        n, mb = len(rollout), cfg.minibatch_size or len(rollout)
        chunks = [slice(i, min(i + mb, n)) for i in range(0, n, mb)]
        with torch.no_grad():
            old = torch.cat([self._logprobs(rollout, c)[0] for c in chunks]) if cfg.inner_iterations > 1 else None
            ref = None
            if self.reference is not None:
                ref = torch.cat([
                    self.reference.logprobs(rollout.prompt_ids[c], rollout.prompt_mask[c], rollout.completion_ids[c],
                                            rollout.completion_mask[c], cfg.temperature)
                    for c in chunks
                ])

        opt, sched = self.optimizers(), self.lr_schedulers()
        totals = {"loss": 0.0, "clip_frac": 0.0, "kl": 0.0, "entropy": 0.0}
        for _ in range(cfg.inner_iterations):
            opt.zero_grad()
            for c in chunks:
                logprobs, entropy = self._logprobs(rollout, c, with_entropy=True)
                loss, stats = grpo_loss(
                    logprobs, logprobs.detach() if old is None else old[c], advantages[c], mask[c],
                    ref_logprobs=None if ref is None else ref[c], beta=cfg.beta,
                    eps_low=cfg.clip_eps_low, eps_high=cfg.clip_eps_high, kl_kind=cfg.kl_estimator, agg=cfg.loss_agg,
                )
                self.check_finite(loss)
                weight = (c.stop - c.start) / n  # minibatch losses are means; weight them into the batch mean
                self.manual_backward(loss * weight)
                totals["loss"] += loss.item() * weight / cfg.inner_iterations
                totals["clip_frac"] += stats["clip_frac"].item() * weight / cfg.inner_iterations
                totals["kl"] += stats.get("kl", torch.tensor(0.0)).item() * weight / cfg.inner_iterations
                totals["entropy"] += ((entropy * mask[c]).sum() / mask[c].sum().clamp(min=1)).item() * weight / cfg.inner_iterations
            if cfg.max_grad_norm:
                self.clip_gradients(opt, gradient_clip_val=cfg.max_grad_norm, gradient_clip_algorithm="norm")
            opt.step()
            sched.step()

        groups = rewards.view(-1, G)
        log = dict(
            loss=totals["loss"], reward=rewards.mean(), reward_std=groups.std(-1).mean(),
            frac_zero_std_groups=(groups.std(-1) == 0).float().mean(), advantage_abs=advantages.abs().mean(),
            clip_frac=totals["clip_frac"], entropy=totals["entropy"],
            completion_length=rollout.lengths.float().mean(), truncated_frac=rollout.truncated.float().mean(),
        )
        if self.reference is not None:
            log["kl"] = totals["kl"]
        if "correctness" in parts:
            log["accuracy"] = parts["correctness"].mean()
        for name, values in parts.items():
            log[f"reward/{name}"] = values.mean()
        self.log("train/reward", log.pop("reward"), prog_bar=True, on_step=True, batch_size=len(prompts))
        self.log_dict({f"train/{k}": v for k, v in log.items()}, on_step=True, batch_size=len(prompts))
        tokens = int(rollout.prompt_mask.sum() + mask.sum()) * (1 + cfg.inner_iterations)
        self.count_tokens(tokens)
