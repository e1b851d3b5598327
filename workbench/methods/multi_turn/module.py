"""Multi-turn RL, one step: play G episodes per environment instance -> credit per turn / token -> PPO-clip update.

Every on-policy method of the family is this loop with its own ``advantages(episodes)`` (GRPO / GiGPO,
PPO-GAE / POAD / MA-RLHF with a critic, VinePPO, PURE). The policy loss is the group-RL family's clipped
surrogate (``losses.grpo_loss``) over turn rows, whose completion masks cover the policy's action tokens only.
Evaluation plays greedy episodes on held-out seeds and logs success rate, return, turns and invalid actions.
Single-turn tasks (arithmetic, ...) play as one-turn environments, so these methods run there too.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from workbench.methods.base import PolicyModule, prompt_collate
from workbench.methods.group_rl.losses import grpo_loss
from workbench.methods.multi_turn.rollout import Episodes, run_episodes, sample_after_prefix
from workbench.policy.generation import build_generator
from workbench.policy.logprobs import Reference, token_logprobs
from workbench.tasks.envs.base import env_for, episode_rows


class MultiTurnModule(PolicyModule):
    family = "multi_turn"
    keep_states = False  # VinePPO: keep a copy of every env before each action

    def __init__(self, policy, task, method, trainer_cfg=None):
        super().__init__(policy, task, method, trainer_cfg)
        self.automatic_optimization = False
        self.generator = build_generator(method.get("generation"))
        self.reference = None
        if method.get("beta", 0.0) > 0 or method.get("log_kl", False):
            self.reference = Reference(self.model, use_adapters_off=hasattr(self.model, "disable_adapter"))

    def on_fit_start(self):
        if self.reference is not None:
            self.reference.to(self.device)

    # ---- data: episode rows (env seeds, or a single-turn task's prompts) ---------------------------------
    def train_dataloader(self):
        world = self.trainer.world_size if self._trainer is not None else 1
        return DataLoader(episode_rows(self.task, "train"), batch_size=self.cfg.batch_size // world, shuffle=True,
                          drop_last=True, collate_fn=prompt_collate)

    def _eval_loader(self, split: str):
        return DataLoader(episode_rows(self.task, split), batch_size=self.cfg.eval.batch_size, collate_fn=prompt_collate)

    @staticmethod
    def rows(batch: dict) -> list[dict]:
        keys = list(batch)
        return [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]

    # ---- playing -----------------------------------------------------------------------------------------
    def generate(self, texts: list[str], prefixes=None, temperature: float | None = None, max_new_tokens: int | None = None):
        temperature = self.cfg.temperature if temperature is None else temperature
        budget = max_new_tokens or self.cfg.max_new_tokens
        if prefixes is not None:
            return sample_after_prefix(self.model, self.tokenizer, texts, prefixes, budget, temperature, self.cfg.top_p)
        return self.generator(self.model, self.tokenizer, texts, n=1, max_new_tokens=budget,
                              temperature=temperature, top_p=self.cfg.top_p)

    def play(self, rows: list[dict], n: int, temperature: float | None = None, keep_states: bool = False) -> Episodes:
        """``n`` episodes of every row (a group each), played in one batch."""
        envs, group = [], []
        for g, row in enumerate(rows):
            for _ in range(n):
                envs.append(env_for(self.task, row))
                group.append(g)
        return self.play_envs(envs, group, temperature, keep_states)

    def play_envs(self, envs, group, temperature=None, keep_states=False, prefixes=None) -> Episodes:
        return run_episodes(envs, group, self.policy.prompt_text,
                            lambda texts, pre: self.generate(texts, pre, temperature),
                            self.tokenizer.pad_token_id, keep_states=keep_states, prefixes=prefixes)

    # ---- evaluation: greedy episodes on held-out seeds -------------------------------------------------------
    def _greedy_eval(self, batch, prefix: str):
        episodes = self.play(self.rows(batch), 1, temperature=0.0)
        n = len(episodes)
        for key, value in episodes.stats().items():
            self.log(f"{prefix}/{key}", value, batch_size=n, on_epoch=True, sync_dist=True)

    # ---- the step --------------------------------------------------------------------------------------
    def advantages(self, episodes: Episodes) -> torch.Tensor:
        """(N,) per turn row or (N, T) per token. Subclasses: GiGPO, PPO (critic), VinePPO, PURE. Method-specific
        statistics of the step go in ``self._extra_stats`` (logged as train/<name>)."""
        raise NotImplementedError

    def auxiliary_loss(self, episodes: Episodes, c: slice) -> tuple[torch.Tensor | None, dict]:
        """Added to the policy loss of rows ``c`` (PPO's value loss); None for critic-free methods."""
        return None, {}

    def _chunks(self, n: int) -> list[slice]:
        mb = self.cfg.get("minibatch_size") or n
        return [slice(i, min(i + mb, n)) for i in range(0, n, mb)]

    def _logprobs(self, model, r, c: slice, with_entropy: bool = False):
        return token_logprobs(model, r.prompt_ids[c], r.prompt_mask[c], r.completion_ids[c], r.completion_mask[c],
                              temperature=self.cfg.temperature, with_entropy=with_entropy)

    def training_step(self, batch, batch_idx):
        cfg = self.cfg
        self._times = {}
        with self._timed("generation"):
            episodes = self.play(self.rows(batch), cfg.group_size, keep_states=self.keep_states)
        r = episodes.turns.rollout
        mask = r.completion_mask.float()
        chunks = self._chunks(len(r))
        with self._timed("logprobs"), torch.no_grad():
            # with one update per rollout pi_old is the live policy: the loss reuses its detached log-probs
            needs_old = cfg.inner_iterations > 1 or cfg.get("kl_in_reward", False)
            self.old_logprobs = torch.cat([self._logprobs(self.model, r, c)[0] for c in chunks]) if needs_old else None
            self.ref_logprobs = None
            if self.reference is not None:
                self.ref_logprobs = torch.cat([self.reference.logprobs(r.prompt_ids[c], r.prompt_mask[c], r.completion_ids[c],
                                                                       r.completion_mask[c], cfg.temperature) for c in chunks])
        with self._timed("advantages"):
            advantages = self.advantages(episodes).to(self.device)
        in_loss_beta = 0.0 if cfg.get("kl_in_reward", False) else float(cfg.get("beta", 0.0))
        opt, sched = self.optimizers(), self.lr_schedulers()
        totals: dict[str, float] = {}
        n = len(r)
        normalizer = mask.sum().clamp(min=1)
        with self._timed("update"):
            for _ in range(cfg.inner_iterations):
                opt.zero_grad()
                for c in chunks:
                    logprobs, entropy = self._logprobs(self.model, r, c, with_entropy=True)
                    loss, stats = grpo_loss(
                        logprobs, logprobs.detach() if self.old_logprobs is None else self.old_logprobs[c],
                        advantages[c], mask[c],
                        ref_logprobs=None if self.ref_logprobs is None else self.ref_logprobs[c], beta=in_loss_beta,
                        eps_low=cfg.clip_eps, eps_high=cfg.clip_eps, kl_kind=cfg.get("kl_estimator", "k3"),
                        agg=cfg.loss_agg, token_normalizer=normalizer if cfg.loss_agg == "token_mean" else None,
                    )
                    weight = 1.0 if cfg.loss_agg == "token_mean" else (c.stop - c.start) / n
                    extra, extra_stats = self.auxiliary_loss(episodes, c)
                    total = loss * weight + (extra if extra is not None else 0.0)
                    self.check_finite(total)
                    self.manual_backward(total)
                    stats.update(extra_stats)
                    stats["policy_loss"] = loss.detach() * weight
                    stats["entropy"] = (entropy * mask[c]).sum() / mask[c].sum().clamp(min=1)
                    for key, value in stats.items():
                        share = 1.0 if key in ("policy_loss",) or key.endswith("_loss") else (c.stop - c.start) / n
                        totals[key] = totals.get(key, 0.0) + float(value) * share / cfg.inner_iterations
                if cfg.max_grad_norm:
                    self.clip_gradients(opt, gradient_clip_val=cfg.max_grad_norm, gradient_clip_algorithm="norm")
                opt.step()
                sched.step()
            self.generator.sync(self.model)
        self.log_step(episodes, advantages, mask, totals)

    def log_step(self, episodes: Episodes, advantages: torch.Tensor, mask: torch.Tensor, totals: dict) -> None:
        r = episodes.turns.rollout
        adv_abs = (advantages.abs().mean() if advantages.dim() == 1
                   else (advantages.abs() * mask).sum() / mask.sum().clamp(min=1))
        log = {**episodes.stats(), "advantage_abs": float(adv_abs), "action_length": float(r.lengths.float().mean()),
               "rows": float(len(r)), **totals, **getattr(self, "_extra_stats", {}),
               **{f"time_{k}": v for k, v in self._times.items()}}
        E = len(episodes)
        self.log("train/reward", episodes.returns.mean(), prog_bar=True, on_step=True, batch_size=E)
        self.log_dict({f"train/{k}": float(v) for k, v in log.items()}, on_step=True, batch_size=E)
        self.count_tokens(int(r.prompt_mask.sum() + mask.sum()) * (1 + self.cfg.inner_iterations))
