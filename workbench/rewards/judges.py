"""Judges: one interface for everything that scores or compares completions.

A judge has

* ``score(prompts, completions, **fields) -> (N,) float tensor``: a scalar reward per completion, and
* ``prefer(prompts, a, b, **fields) -> (N,) float tensor``: P(a > b) in [0, 1] for each pair, and
* ``group_preferences(prompts, completions, group_size, **fields)``: all pairs within each group of samples
  at the cost of scoring each sample once (online methods, SPO's win rate).

Online preference methods label their samples with ``prefer``; evaluation reports the win rate of the
policy against the reference as ``mean(prefer(x, y_policy, y_ref))``. Score-based judges get ``prefer``
from their scores: ``hard`` (1 if a scores higher, 0 if lower, 1/2 on ties) or ``bradley_terry``
(sigmoid((s_a - s_b) / temperature)).

Built from ``method.judge`` (``{name: oracle}``, ``{name: reward, reward: correctness}``, ``{name:
reward_model, path: ...}``) by :func:`build_judge`; the registry is ``JUDGES``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from workbench.errors import ConfigError
from workbench.registry import Registry

JUDGES = Registry("judge")
PREFERENCE_LINKS = ("hard", "bradley_terry")


class Judge:
    def __init__(self, link: str = "hard", temperature: float = 1.0):
        if link not in PREFERENCE_LINKS:
            raise ConfigError("method.judge.link", f"unknown '{link}'", f"use one of {list(PREFERENCE_LINKS)}")
        if not temperature > 0:
            raise ConfigError("method.judge.temperature", f"must be > 0, got {temperature}", "e.g. 1.0")
        self.link, self.temperature = link, float(temperature)

    def score(self, prompts: Sequence[str], completions: Sequence[str], **fields) -> torch.Tensor:
        raise NotImplementedError

    def preference(self, sa: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
        """P(a > b) from the two scores (broadcasting)."""
        if self.link == "hard":
            return (sa > sb).float() + 0.5 * (sa == sb).float()
        return torch.sigmoid((sa - sb) / self.temperature)

    def prefer(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], **fields) -> torch.Tensor:
        return self.preference(self.score(prompts, a, **fields).float(), self.score(prompts, b, **fields).float())

    def group_preferences(self, prompts: Sequence[str], completions: Sequence[str], group_size: int,
                          **fields) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, G, G) P(y_i > y_j) among each prompt's G completions (rows [b*G:(b+1)*G]; 1/2 on the diagonal) and
        the (N,) scores: every completion is scored once, not once per pair it is in."""
        scores = self.score(prompts, completions, **fields).float()
        grouped = scores.view(-1, group_size)
        return self.preference(grouped[:, :, None], grouped[:, None, :]), scores


@JUDGES.register("oracle")
class OracleJudge(Judge):
    """The task's own oracle reward (synthetic tasks that know the true reward)."""

    def __init__(self, task, **kw):
        if not hasattr(task, "oracle_reward"):
            raise ConfigError("method.judge.name", f"task '{task.name}' has no oracle reward",
                              "use judge {name: reward_model, path: ...} or {name: reward, reward: correctness}")
        super().__init__(**kw)
        self.task = task

    def score(self, prompts, completions, answer=None, **_):
        if answer is None:
            raise ValueError("the oracle judge needs the task's 'answer' field")
        return torch.tensor([self.task.oracle_reward(c, a) for c, a in zip(completions, answer, strict=True)])


@JUDGES.register("reward")
class RewardJudge(Judge):
    """Any entry of the reward registry (a verifier such as ``correctness``, or a rule like ``length``)."""

    def __init__(self, task, reward: str = "correctness", params: dict | None = None, **kw):
        from workbench.rewards import RewardSet

        super().__init__(**kw)
        self.rewards = RewardSet([{"name": reward, **(params or {})}], task)

    def score(self, prompts, completions, **fields):
        total, _ = self.rewards(list(prompts), list(completions), **fields)
        return total.float()


@JUDGES.register("reward_model")
class RewardModelJudge(Judge):
    """A sequence-classification reward model saved in a local folder (e.g. by ``method=reward_model``)."""

    def __init__(self, task, path: str | None = None, batch_size: int = 64, max_length: int = 1024, **kw):
        from workbench.rewards.base import RewardParamError
        from workbench.rewards.model import SequenceClassifierReward

        super().__init__(**kw)
        if not path:
            raise ConfigError("method.judge.path", "no reward model folder given",
                              "train one with method=reward_model and pass its folder as method.judge.path")
        try:
            self.model = SequenceClassifierReward(str(path), batch_size=batch_size, max_length=max_length)
        except RewardParamError as e:
            raise ConfigError(f"method.judge.{e.param}", e.problem, e.fix) from None

    def score(self, prompts, completions, **_):
        return torch.tensor(self.model(list(prompts), list(completions)))


def build_judge(spec, task) -> Judge:
    spec = dict(spec or {"name": "oracle"})
    name = spec.pop("name", None)
    if name not in JUDGES:
        raise ConfigError("method.judge.name", f"unknown judge '{name}'", f"choose from {sorted(JUDGES)}")
    return JUDGES[name](task, **spec)
