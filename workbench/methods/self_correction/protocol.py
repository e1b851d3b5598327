"""The two-attempt protocol: prompt -> attempt 1 -> feedback -> attempt 2, and the warm start that teaches its format.

Every conversation is a message list, rendered by the policy (chat template, or the HH layout for tiny models):

    attempt 1:  [user: x]                                          -> y1
    critique:   [user: x, assistant: y1, user: <critique prompt>]  -> c        (Critique-RL's critic)
    attempt 2:  [user: x, assistant: y1, user: <feedback> <instruction>] -> y2

Feedback (``method.protocol.feedback``): ``none`` (intrinsic self-correction, SCoRe's setting), ``verdict`` (the
verifier's verdict on y1: an oracle), or ``critique`` (a critique written by a critic policy).

``SelfCorrectionTask`` wraps a single-turn task. Its validation / test splits are the task's problems as attempt-1
conversations. Its train split is the warm-start corpus (a model built from scratch has never seen the protocol):
  * attempt-1 rows: x -> the reference solution;
  * attempt-2 rows: y1 is the reference corrupted with probability ``first_error_prob``. When the feedback says y1
    is correct, y2 keeps y1; otherwise y2 is an independent re-attempt: the reference, corrupted with probability
    ``second_error_prob`` (default 0.2, about the warm start's own first-attempt error rate). So the warm
    start's second attempt is no better informed than its first: any self-correction is learned by the method on
    top, not copied from the data;
  * critique rows (feedback ``critique``): the verdict on y1, flipped with probability ``verdict_noise``, plus
    "too high" / "too low" for numeric answers. A noisy critic is what Critique-RL's first stage improves.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from datasets import Dataset, DatasetDict

from workbench.errors import ConfigError
from workbench.tasks.base import Task, normalize_number

FEEDBACKS = ("none", "verdict", "critique")
INTEGER = re.compile(r"\d+")


def known_fields(cls, cfg, prefix: str) -> dict:
    """A config block as a dict, refused (one line) when it has a key the dataclass ``cls`` does not."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(cls.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}", f"is not a field of {prefix}", f"use only {sorted(cls.__dataclass_fields__)}")
    return cfg


@dataclass(frozen=True)
class Protocol:
    feedback: str = "none"
    # SCoRe's MATH instruction, shortened: the warm start teaches it, a chat model reads it
    instruction: str = "There might be an error in the solution above. Please correct the error, if any, and answer again."
    verdict_correct: str = "Your answer is correct."
    verdict_wrong: str = "Your answer is incorrect."
    critique_instruction: str = "Check the answer above. Is it correct or wrong?"

    @classmethod
    def from_config(cls, cfg) -> "Protocol":
        cfg = known_fields(cls, cfg, "method.protocol")
        protocol = cls(**{k: str(v) for k, v in cfg.items()})
        if protocol.feedback not in FEEDBACKS:
            raise ConfigError("method.protocol.feedback", f"unknown '{protocol.feedback}'", f"use one of {list(FEEDBACKS)}")
        return protocol

    # ---- conversations ----------------------------------------------------------------------------
    @staticmethod
    def first(prompt) -> list[dict]:
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)

    def second(self, prompt, first: str, feedback: str = "") -> list[dict]:
        turn = f"{feedback} {self.instruction}".strip()
        return self.first(prompt) + [{"role": "assistant", "content": first.strip()}, {"role": "user", "content": turn}]

    def critique_prompt(self, prompt, first: str) -> list[dict]:
        return self.first(prompt) + [{"role": "assistant", "content": first.strip()},
                                     {"role": "user", "content": self.critique_instruction}]

    def verdict(self, correct: bool) -> str:
        return self.verdict_correct if correct else self.verdict_wrong


# ---- critiques: the text a critic writes, and the verdict read back from it --------------------------------
def critique_text(correct: bool, direction: str | None = None) -> str:
    if correct:
        return "The answer is correct."
    return f"The answer is wrong, it is too {direction}." if direction else "The answer is wrong."


def parse_verdict(critique: str) -> bool | None:
    """True / False for the first 'correct' / 'wrong' in the critique (Critique-RL's verdict); None when neither."""
    match = re.search(r"\b(correct|wrong)\b", critique.lower())
    return None if match is None else match.group(1) == "correct"


def direction(task: Task, first: str, answer: str) -> str | None:
    """'high' / 'low' when y1 and the answer are both numbers (a critique's hint), else None."""
    try:
        guess, truth = normalize_number(task.extract_answer(first)), normalize_number(answer)
    except Exception:  # noqa: BLE001 - tasks whose answers are not numbers (Countdown) give no hint
        return None
    if guess is None or truth is None or guess == truth:
        return None
    return "high" if float(guess) > float(truth) else "low"


# ---- the warm start's mistakes --------------------------------------------------------------------------------
def corrupt(solution: str, rng: random.Random) -> str:
    """The solution with its last whole number moved by 1..10 (never below 0): a plausible wrong answer."""
    numbers = list(INTEGER.finditer(solution))
    if not numbers:
        return solution + "0"
    last = numbers[-1]
    value = int(last.group(0))
    delta = rng.choice([d for d in range(-10, 11) if d and value + d >= 0])
    return solution[: last.start()] + str(value + delta) + solution[last.end():]


@dataclass(frozen=True)
class WarmStart:
    first_error_prob: float = 0.5
    second_error_prob: float = 0.2
    verdict_noise: float = 0.3
    seed: int = 0

    @classmethod
    def from_config(cls, cfg) -> "WarmStart":
        cfg = known_fields(cls, cfg, "method.base.two_attempt")
        for key in ("first_error_prob", "second_error_prob", "verdict_noise"):
            value = cfg.get(key, getattr(cls, key))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"method.base.two_attempt.{key}", f"must be a probability in [0, 1], got {value!r}",
                                  f"e.g. method.base.two_attempt.{key}=0.5")
        return cls(**cfg)


class SelfCorrectionTask(Task):
    """A single-turn task played with the two-attempt protocol (see the module docstring)."""

    def __init__(self, base: Task, protocol: Protocol, warm_start: WarmStart):
        self.base, self.protocol, self.warm_start = base, protocol, warm_start
        self.name = base.name
        self.problems = DatasetDict({split: self._first_attempts(base.split(split)) for split in base.splits})
        self.splits = DatasetDict(train=self._warm_start_rows(base.split("train")),
                                  validation=self.problems["validation"], test=self.problems["test"])

    def extract_answer(self, completion: str) -> str | None:
        return self.base.extract_answer(completion)

    def verify(self, completion: str, answer: str) -> bool:
        return self.base.verify(completion, answer)

    def corpus(self):
        for row in self.splits["train"]:
            yield "".join(m["content"] for m in row["prompt"]) + row["target"]

    def _first_attempts(self, rows: Dataset) -> Dataset:
        return Dataset.from_list([{"prompt": self.protocol.first(r["prompt"]), "target": r["target"], "answer": r["answer"]}
                                  for r in rows])

    def _warm_start_rows(self, rows: Dataset) -> Dataset:
        p, w = self.protocol, self.warm_start
        rng = random.Random(w.seed)
        out = []
        for r in rows:
            x, reference, answer = r["prompt"], r["target"], r["answer"]
            out.append({"prompt": p.first(x), "target": reference, "answer": answer})
            first = corrupt(reference, rng) if rng.random() < w.first_error_prob else reference
            correct = self.base.verify(first, answer)
            feedback, said_correct = "", None
            if p.feedback == "verdict":
                feedback, said_correct = p.verdict(correct), correct
            elif p.feedback == "critique":
                said_correct = correct if rng.random() >= w.verdict_noise else not correct
                feedback = critique_text(said_correct, None if said_correct else direction(self.base, first, answer))
                out.append({"prompt": p.critique_prompt(x, first), "target": " " + feedback, "answer": answer})
            if said_correct:
                second = first
            else:
                second = corrupt(reference, rng) if rng.random() < w.second_error_prob else reference
            out.append({"prompt": p.second(x, first, feedback), "target": second, "answer": answer})
        return Dataset.from_list(out)


def for_method(task: Task, method) -> Task:
    """The task a method plays: self-correction methods get the two-attempt wrapper, the others the task itself."""
    if method.get("family") != "self_correction":
        return task
    warm_start = (method.get("base") or {}).get("two_attempt")
    return SelfCorrectionTask(task, Protocol.from_config(method.get("protocol")), WarmStart.from_config(warm_start))
