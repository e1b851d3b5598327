"""Shared LightningModule pieces: policy, task data, greedy evaluation, optimizer, NaN guard, RNG state."""

from __future__ import annotations

import contextlib
import math
import time

import lightning as L
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from workbench.errors import NonFiniteLossError
from workbench.methods.rng import rng_state, set_rng_state
from workbench.methods.timing import StepTimes
from workbench.policy.models import Policy
from workbench.policy.logprobs import token_logprobs
from workbench.policy.sampler import sample
from workbench.tasks import Task


def pass_at_k(num_correct: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """1 - C(n-c, k) / C(n, k) per prompt, computed as a stable product."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= eval.num_samples={n}")
    out = []
    for c in num_correct.long().tolist():
        if n - c < k:
            out.append(1.0)
            continue
        out.append(1.0 - math.prod((n - c - i) / (n - i) for i in range(k)))
    return torch.tensor(out)


def prompt_collate(rows: list[dict]) -> dict[str, list]:
    return {key: [row[key] for row in rows] for key in rows[0]}


class PolicyModule(StepTimes, L.LightningModule):
    family = "base"

    def __init__(self, policy: Policy, task: Task, method: DictConfig, trainer_cfg: DictConfig | None = None):
        super().__init__()
        self.policy = policy
        self.model = policy.model  # registered submodule: what the optimizer and checkpoints see
        self.task = task
        self.cfg = method
        self.total_steps = int(trainer_cfg.max_steps) if trainer_cfg is not None else 1000
        self.model.train()  # from_pretrained returns eval mode; sampling switches modes itself
        self.eval_prefix = "test"  # train.py switches it to tell before-training from after-training evals
        self._step_started = time.perf_counter()
        self._times: dict[str, float] = {}

    # ---- data -------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.policy.tokenizer

    def formatted(self, prompts: list) -> list[str]:
        """Prompts (strings or conversational message lists) as the texts the model continues."""
        return [self.policy.prompt_text(p) for p in prompts]

    def train_collate(self, rows: list[dict]):
        return prompt_collate(rows)

    def train_dataloader(self):
        # method.batch_size is the global batch: under DDP each of the world_size processes takes its share
        world = self.trainer.world_size if self._trainer is not None else 1
        return DataLoader(
            self.task.split("train"),
            batch_size=self.cfg.batch_size // world,
            shuffle=True,
            drop_last=True,
            collate_fn=self.train_collate,
        )

    def _eval_loader(self, split: str):
        return DataLoader(self.task.split(split), batch_size=self.cfg.eval.batch_size, collate_fn=prompt_collate)

    def val_dataloader(self):
        return self._eval_loader("validation")

    def test_dataloader(self):
        return self._eval_loader("test")

    # ---- evaluation: greedy accuracy on held-out prompts ---------------------------------------
    def _greedy_eval(self, batch, prefix: str):
        rollout = sample(
            self.model, self.tokenizer, self.formatted(batch["prompt"]), n=1,
            max_new_tokens=self.cfg.eval.max_new_tokens, temperature=0.0,
        )
        correct = torch.tensor([float(self.task.verify(t, a)) for t, a in zip(rollout.texts, batch["answer"])])
        n = len(correct)
        self.log(f"{prefix}/accuracy", correct.mean(), batch_size=n, on_epoch=True, sync_dist=True)
        self.log(f"{prefix}/completion_length", rollout.lengths.float().mean(), batch_size=n, on_epoch=True, sync_dist=True)
        self.log(f"{prefix}/truncated_frac", rollout.truncated.float().mean(), batch_size=n, on_epoch=True, sync_dist=True)
        if "difficulty" in batch:  # a task that mixes difficulty levels (arithmetic's num_operands list): accuracy per level
            self._log_by_difficulty(batch["difficulty"], correct, prefix)
        ks = list(self.cfg.eval.get("pass_k") or [])
        if ks:
            self._pass_at_k(batch, prefix, ks)
        if getattr(self, "judge", None) is not None:
            self.judge_samples(batch, prefix)

    def _log_by_difficulty(self, levels: list, correct: torch.Tensor, prefix: str) -> None:
        """``{prefix}/accuracy_<level>`` for every level of the task's 'difficulty' column, weighted by its rows. A
        level absent from this batch logs weight 0, so every rank logs the same keys (DDP's sync needs them all)."""
        levels = [str(level) for level in levels]
        known = self.task.difficulty_levels() if hasattr(self.task, "difficulty_levels") else sorted(set(levels))
        for level in known:
            picked = torch.tensor([x == level for x in levels])
            count = int(picked.sum())
            value = correct[picked].mean() if count else torch.tensor(0.0)
            self.log(f"{prefix}/accuracy_{level}", value, batch_size=count, on_epoch=True, sync_dist=True)

    def _pass_at_k(self, batch, prefix: str, ks: list[int]) -> None:
        """Unbiased pass@k (Chen et al. 2021) from ``eval.num_samples`` samples per prompt at ``eval.temperature``."""
        samples = int(self.cfg.eval.num_samples)
        rollout = sample(
            self.model, self.tokenizer, self.formatted(batch["prompt"]), n=samples,
            max_new_tokens=self.cfg.eval.max_new_tokens, temperature=float(self.cfg.eval.temperature),
        )
        answers = [a for a in batch["answer"] for _ in range(samples)]
        correct = torch.tensor([float(self.task.verify(t, a)) for t, a in zip(rollout.texts, answers)]).view(-1, samples)
        for k in ks:
            values = pass_at_k(correct.sum(-1), samples, k)
            self.log(f"{prefix}/pass_at_{k}", values.mean(), batch_size=len(values), on_epoch=True, sync_dist=True)

    @torch.no_grad()
    def judge_samples(self, rows: dict, prefix: str) -> None:
        """With a judge (``self.judge``): sample the policy and the reference (``self.reference``) on held-out
        prompts at ``eval.temperature``; log the judge's reward of the policy's samples, their win rate against the
        reference's samples, the sampled KL(pi || pi_ref) and the verifier's accuracy on the samples."""
        prompts = self.formatted(rows["prompt"])
        fields = {k: v for k, v in rows.items() if k in ("answer",)}
        kw = dict(max_new_tokens=self.cfg.eval.max_new_tokens, temperature=float(self.cfg.eval.temperature))
        policy = sample(self.model, self.tokenizer, prompts, **kw)
        n = len(prompts)
        log = dict(on_epoch=True, batch_size=n, sync_dist=True)
        self.log(f"{prefix}/judge_reward", self.judge.score(rows["prompt"], policy.texts, **fields).float().mean(), **log)
        if "answer" in rows:
            correct = torch.tensor([float(self.task.verify(t, a)) for t, a in zip(policy.texts, rows["answer"])])
            self.log(f"{prefix}/sample_accuracy", correct.mean(), **log)
        reference = getattr(self, "reference", None)
        if reference is None:
            return
        with reference._model.disable_adapter() if reference.use_adapters_off else contextlib.nullcontext():
            baseline = sample(reference._model, self.tokenizer, prompts, **kw)
        wins = self.judge.prefer(rows["prompt"], policy.texts, baseline.texts, **fields)
        self.log(f"{prefix}/win_rate", wins.float().mean(), **log)
        args = (policy.prompt_ids, policy.prompt_mask, policy.completion_ids, policy.completion_mask)
        lp, _ = token_logprobs(self.model, *args)
        self.log(f"{prefix}/kl", (lp - reference.logprobs(*args)).sum(-1).mean(), **log)

    def validation_step(self, batch, batch_idx):
        self._greedy_eval(batch, "val")

    def test_step(self, batch, batch_idx):
        self._greedy_eval(batch, self.eval_prefix)

    # ---- optimization -----------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """What the optimizer trains; methods with a critic add a group with its own learning rate."""
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.param_groups(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                betas=tuple(self.cfg.adam_betas))
        warmup = int(self.cfg.warmup_steps)
        total = max(self.total_steps, 1)
        kind = self.cfg.scheduler

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if kind == "cosine":
                progress = min(1.0, (step - warmup) / max(1, total - warmup))
                return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
            return 1.0

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def check_finite(self, loss, what: str = "loss") -> None:
        loss = torch.as_tensor(loss)
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"{what} became {loss.detach().float().mean().item()} at step {self.global_step}; stopped, last good checkpoint kept "
                f"(try a lower method.lr or method.max_grad_norm)"
            )

    # ---- throughput ---------------------------------------------------------------------------
    def on_train_batch_start(self, batch, batch_idx):
        self._step_started = time.perf_counter()

    def count_tokens(self, tokens: int) -> None:
        """Tokens this step pushed through the model (sampled, scored and trained), for tokens/s."""
        self._step_tokens = tokens

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # here, after backward and the optimizer step, so step_time covers the whole step
        elapsed = max(time.perf_counter() - self._step_started, 1e-9)
        self.log("train/step_time", elapsed, on_step=True, batch_size=1)
        self.log("train/tokens_per_s", getattr(self, "_step_tokens", 0) / elapsed, on_step=True, batch_size=1)
        opts = self.optimizers()
        opt = opts[0] if isinstance(opts, list) else opts  # with several optimizers, the policy's comes first
        self.log("train/lr", opt.param_groups[0]["lr"], on_step=True, batch_size=1)

    # ---- RNG state travels with checkpoints, so a resumed run samples like an uninterrupted one
    def on_save_checkpoint(self, checkpoint):
        checkpoint["workbench_rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint):
        set_rng_state(checkpoint.get("workbench_rng"))
