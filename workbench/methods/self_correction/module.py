"""The self-correction family's shared module: two-attempt rollouts on the group-RL update, SCoRe's metrics in eval.

``two_attempts(batch, n, temperature)`` samples n first attempts per problem, the protocol's feedback on each
(none / the verifier's verdict / a critic's critique via ``critiques``), and one second attempt per first attempt.
Evaluation runs it greedily on held-out problems and logs Accuracy@t1, Accuracy@t2, Δ(t1,t2), Δ i→c, Δ c→i and
the edit share (metrics.py); ``accuracy`` is Accuracy@t2, the protocol's final answer.

Methods subclass it and write ``training_step`` from these parts plus the group-RL module's update
(``_backward_rollout``: the clipped surrogate + KL over one Rollout, chunked), so every method of the family shares
one rollout path, one log-prob path and one loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader

from workbench.methods.base import prompt_collate
from workbench.methods.group_rl.module import GroupRLModule
from workbench.methods.self_correction.metrics import self_correction_metrics
from workbench.methods.self_correction.protocol import Protocol, SelfCorrectionTask
from workbench.policy.sampler import Rollout, sample
from workbench.tasks.base import normalize_number


@dataclass
class TwoAttempts:
    """Row i*n+j is the j-th two-attempt sample of problem i; ``second`` is aligned with ``first``."""

    first: Rollout
    second: Rollout
    first_correct: torch.Tensor  # (N,) the verifier's verdict, float 0/1
    second_correct: torch.Tensor
    feedback: list[str]
    fields: dict[str, list]  # task fields (prompt = the attempt-1 conversation, answer, ...), one entry per row
    group_size: int
    first_rewards: torch.Tensor | None = None  # (N,) method.rewards of each attempt, when the method scores them
    second_rewards: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def edited(self, task) -> torch.Tensor:
        """True where the second attempt's answer differs from the first's (text when no answer parses)."""
        def key(text):
            raw = task.extract_answer(text)
            return normalize_number(raw) or (raw.strip() if raw else text.strip())

        return torch.tensor([key(a) != key(b) for a, b in zip(self.first.texts, self.second.texts)])


class SelfCorrectionModule(GroupRLModule):
    family = "self_correction"

    def __init__(self, policy, task, method, trainer_cfg=None):
        if not isinstance(task, SelfCorrectionTask):
            raise TypeError("self-correction methods play a SelfCorrectionTask; workbench.runner wraps the task")
        super().__init__(policy, task, method, trainer_cfg)
        self.protocol: Protocol = task.protocol

    # ---- data: the task's problems as attempt-1 conversations --------------------------------------------
    def train_dataloader(self):
        world = self.trainer.world_size if self._trainer is not None else 1
        return DataLoader(self.task.problems["train"], batch_size=self.cfg.batch_size // world, shuffle=True,
                          drop_last=True, collate_fn=prompt_collate)

    # ---- the protocol -------------------------------------------------------------------------------------
    def critiques(self, prompts: list, firsts: list[str], greedy: bool) -> list[str]:
        """Feedback ``critique``: the critic's critiques of the first attempts (Critique-RL overrides this)."""
        raise NotImplementedError(f"method '{self.cfg.name}' has no critic; use method.protocol.feedback=none or verdict")

    def feedback_for(self, prompts: list, firsts: list[str], correct: torch.Tensor, greedy: bool) -> list[str]:
        kind = self.protocol.feedback
        if kind == "none":
            return [""] * len(firsts)
        if kind == "verdict":
            return [self.protocol.verdict(bool(c)) for c in correct.tolist()]
        return self.critiques(prompts, firsts, greedy)

    def verify(self, texts: list[str], answers: list[str]) -> torch.Tensor:
        return torch.tensor([float(self.task.verify(t, a)) for t, a in zip(texts, answers)])

    @property
    def attempt_model(self):
        """The model that writes both attempts: the trained policy, or (Critique-RL) a frozen actor."""
        return self.model

    def sample_texts(self, conversations: list, n: int, temperature: float, max_new_tokens: int, model=None) -> Rollout:
        model = self.attempt_model if model is None else model
        texts = self.formatted(conversations)
        if temperature <= 0:  # greedy: the sampler's greedy path (the generation backend samples)
            return sample(model, self.tokenizer, texts, n=n, max_new_tokens=max_new_tokens, temperature=0.0)
        return self.generator(model, self.tokenizer, texts, n=n, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_p=self.cfg.top_p)

    def two_attempts(self, batch: dict, n: int, temperature: float, max_new_tokens: int | None = None,
                     feedback_fn=None) -> TwoAttempts:
        """``feedback_fn(fields, first_texts, first_correct) -> texts`` replaces the protocol's feedback (Critique-GRPO's
        rule critiques in training)."""
        budget = max_new_tokens or self.cfg.max_new_tokens
        first = self.sample_texts(batch["prompt"], n, temperature, budget)
        fields = {k: [v for v in vals for _ in range(n)] for k, vals in batch.items()}
        c1 = self.verify(first.texts, fields["answer"])
        if feedback_fn is not None:
            feedback = feedback_fn(fields, first.texts, c1)
        else:
            feedback = self.feedback_for(fields["prompt"], first.texts, c1, greedy=temperature <= 0)
        seconds = [self.protocol.second(p, y1, f) for p, y1, f in zip(fields["prompt"], first.texts, feedback)]
        second = self.sample_texts(seconds, 1, temperature, budget)
        c2 = self.verify(second.texts, fields["answer"])
        return TwoAttempts(first, second, c1, c2, feedback, fields, n)

    def score_attempts(self, data: TwoAttempts) -> None:
        """``method.rewards`` of both attempts (the verifier's correctness by default) into the batch."""
        extra = {k: v for k, v in data.fields.items() if k != "prompt"}
        for attempt, name in ((data.first, "first_rewards"), (data.second, "second_rewards")):
            rewards, _ = self.rewards(data.fields["prompt"], attempt.texts, group_size=data.group_size,
                                      completion_lengths=attempt.lengths.tolist(), **extra)
            setattr(data, name, rewards.to(self.device))

    # ---- evaluation: SCoRe's metrics on greedy two-attempt rollouts ----------------------------------------
    def _greedy_eval(self, batch, prefix: str):
        data = self.two_attempts(batch, 1, 0.0, self.cfg.eval.max_new_tokens)
        n = len(data.first)
        metrics = self_correction_metrics(data.first_correct, data.second_correct, data.edited(self.task))
        metrics["accuracy"] = metrics["accuracy_t2"]
        metrics["completion_length"] = data.first.lengths.float().mean().item()
        metrics["completion_length_t2"] = data.second.lengths.float().mean().item()
        metrics["truncated_frac"] = data.first.truncated.float().mean().item()
        metrics.update(self.extra_eval_metrics(data))
        for key, value in metrics.items():
            self.log(f"{prefix}/{key}", value, batch_size=n, on_epoch=True, sync_dist=True)

    def extra_eval_metrics(self, data: TwoAttempts) -> dict[str, float]:
        return {}

    # ---- logging --------------------------------------------------------------------------------------------
    def log_attempts(self, data: TwoAttempts, totals: dict, extra: dict | None = None, extra_tokens: int = 0) -> None:
        """Log the step; ``extra_tokens``: tokens a method trained beyond the two sampled attempts (for tokens/s)."""
        metrics = self_correction_metrics(data.first_correct, data.second_correct, data.edited(self.task))
        log = {**metrics, **totals, **(extra or {}), **{f"time_{k}": v for k, v in self._times.items()},
               "completion_length": data.first.lengths.float().mean().item(),
               "completion_length_t2": data.second.lengths.float().mean().item()}
        P = len(data.first) // data.group_size
        self.log("train/accuracy_t2", metrics["accuracy_t2"], prog_bar=True, on_step=True, batch_size=P)
        self.log_dict({f"train/{k}": float(v) for k, v in log.items() if k != "accuracy_t2"}, on_step=True, batch_size=P)
        tokens = sum(int(r.prompt_mask.sum() + r.completion_mask.sum()) for r in (data.first, data.second))
        self.count_tokens(tokens * 2 + extra_tokens)
