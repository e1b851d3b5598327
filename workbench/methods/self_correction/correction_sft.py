"""SFT on self-generated corrections: the two SFT baselines SCoRe compares against (Kumar et al. 2024, Sec. 4).

    loss = − Σ_t log π(y2_t | x, y1, p, y2_<t) / #tokens        over the kept correction traces (x, y1, y2)

``data: star`` — STaR (Zelikman et al. 2022) for self-correction: sample two-attempt traces from the *current*
model and keep only those that fix a mistake (y1 incorrect, y2 correct). The paper runs 3 collect-then-SFT
iterations; here every step collects on its own problems and trains on what it kept (iterations of one step).
``data: pair`` — Pair-SFT (Welleck et al. 2023): pair an incorrect response of the *base* model (the frozen warm
start) with a correct response to the same problem, sampled independently, and train the second attempt to
turn the first into the second. The pairs come from the base model only (one iteration, as in the paper).
``include_correct: true`` adds correct → correct traces / pairs (the paper's D+ variants), which teach the model
to keep a correct answer — and, the paper finds, to edit nothing at all.

Only the second attempt is trained: the first attempt of a fixing trace is wrong by construction.
"""

from __future__ import annotations

import torch

from workbench.errors import ConfigError
from workbench.methods.self_correction.module import SelfCorrectionModule
from workbench.methods.sft import sft_loss
from workbench.policy.logprobs import token_logprobs
from workbench.policy.sampler import Rollout, encode_prompts, right_pad

DATA = ("star", "pair")


def star_keep(first_correct: torch.Tensor, second_correct: torch.Tensor, include_correct: bool) -> torch.Tensor:
    """Which traces STaR trains on: incorrect → correct, plus correct → correct with ``include_correct``."""
    c1, c2 = first_correct.bool(), second_correct.bool()
    return c2 & (~c1 | include_correct)


def correction_pairs(correct: torch.Tensor, group_size: int, include_correct: bool) -> list[tuple[int, int]]:
    """Pair-SFT's (first attempt, target) row pairs inside each group of samples of one problem: every incorrect
    sample with one correct sample (cycling through them), and with ``include_correct`` every correct sample with a
    *different* correct sample when there is one."""
    pairs = []
    groups = correct.bool().view(-1, group_size)
    for g, row in enumerate(groups.tolist()):
        rows = [g * group_size + j for j in range(group_size)]
        right = [r for r, ok in zip(rows, row) if ok]
        if not right:
            continue
        wrong = [r for r, ok in zip(rows, row) if not ok]
        pairs += [(w, right[i % len(right)]) for i, w in enumerate(wrong)]
        if include_correct and len(right) > 1:
            pairs += [(c, right[(i + 1) % len(right)]) for i, c in enumerate(right)]
    return pairs


def validate_correction_sft(m) -> None:
    if m.get("data") not in DATA:
        raise ConfigError("method.data", f"unknown '{m.get('data')}'", f"use one of {list(DATA)} (STaR or Pair-SFT)")
    if not isinstance(m.get("include_correct", False), bool):
        raise ConfigError("method.include_correct", f"must be true or false, got {m.get('include_correct')!r}",
                          "true adds correct -> correct examples (the paper's D+ data)")


class CorrectionSFTModule(SelfCorrectionModule):
    def __init__(self, policy, task, method, trainer_cfg=None):
        super().__init__(policy, task, method, trainer_cfg)
        if method.data == "pair" and self.reference is None:
            raise ConfigError("method.log_kl", "Pair-SFT samples from the frozen warm start, kept as the reference",
                              "set method.log_kl=true")
        if self.protocol.feedback == "critique":
            raise ConfigError("method.protocol.feedback", "the SFT baselines have no critic",
                              "use method.protocol.feedback=none or verdict")

    # ---- the examples of one step -------------------------------------------------------------------------
    def star_examples(self, batch) -> tuple[Rollout | None, dict]:
        data = self.two_attempts(batch, self.cfg.group_size, self.cfg.temperature)
        keep = star_keep(data.first_correct, data.second_correct, bool(self.cfg.include_correct))
        stats = {"accuracy_t1": data.first_correct.mean().item(), "accuracy_t2": data.second_correct.mean().item(),
                 "kept_frac": keep.float().mean().item()}
        rows = torch.nonzero(keep).flatten().tolist()
        return (data.second.select(rows) if rows else None), stats

    def pair_examples(self, batch) -> tuple[Rollout | None, dict]:
        G = self.cfg.group_size
        base = self.reference._model
        first = self.sample_texts(batch["prompt"], G, self.cfg.temperature, self.cfg.max_new_tokens, model=base)
        prompts = [p for p in batch["prompt"] for _ in range(G)]
        answers = [a for a in batch["answer"] for _ in range(G)]
        correct = self.verify(first.texts, answers)
        pairs = correction_pairs(correct, G, bool(self.cfg.include_correct))
        stats = {"base_accuracy": correct.mean().item(), "pairs_per_problem": len(pairs) / len(batch["prompt"])}
        if not pairs:
            return None, stats
        feedback = self.feedback_for([prompts[i] for i, _ in pairs], [first.texts[i] for i, _ in pairs],
                                     correct[[i for i, _ in pairs]], greedy=False)
        conversations = [self.protocol.second(prompts[i], first.texts[i], f) for (i, _), f in zip(pairs, feedback)]
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, self.formatted(conversations), self.device)
        targets = [first.completion_ids[j][first.completion_mask[j].bool()] for _, j in pairs]
        completion_ids, completion_mask = right_pad(targets, self.tokenizer.pad_token_id, self.device)
        texts = [first.texts[j] for _, j in pairs]
        return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, texts,
                       torch.zeros(len(pairs), dtype=torch.bool)), stats

    # ---- the step ---------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        self._times = {}
        with self._timed("generation"):
            examples, stats = (self.star_examples if self.cfg.data == "star" else self.pair_examples)(batch)
        P = len(batch["prompt"])
        opt, sched = self.optimizers(), self.lr_schedulers()
        if examples is None:
            # nothing to imitate this round: the step still counts (max_steps counts collection rounds) but moves no
            # weight: no parameter has a gradient, so AdamW skips them all
            opt.zero_grad(set_to_none=True)
            opt.step()
            sched.step()
            self.log_dict({f"train/{k}": float(v) for k, v in {**stats, "examples": 0}.items()}, on_step=True, batch_size=P)
            return
        with self._timed("update"):
            opt.zero_grad()
            total, n = 0.0, len(examples)
            for c in self._chunks(n):
                logprobs, _ = token_logprobs(self.model, examples.prompt_ids[c], examples.prompt_mask[c],
                                             examples.completion_ids[c], examples.completion_mask[c])
                mask = examples.completion_mask[c].float()
                # chunk token-means weighted by their share of the tokens: the loss of the whole batch
                loss = sft_loss(logprobs, mask) * mask.sum() / examples.completion_mask.sum().clamp(min=1)
                self.check_finite(loss)
                self.manual_backward(loss)
                total += float(loss)
            self._optimizer_step(opt, sched)
        stats.update(loss=total, examples=n, **{f"time_{k}": v for k, v in self._times.items()})
        self.log("train/loss", total, prog_bar=True, on_step=True, batch_size=P)
        self.log_dict({f"train/{k}": float(v) for k, v in stats.items() if k != "loss"}, on_step=True, batch_size=P)
        self.count_tokens(int(examples.prompt_mask.sum() + examples.completion_mask.sum()) * 2)
