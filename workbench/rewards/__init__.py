"""Reward registry. A reward is ``fn(prompts, completions, **task_fields) -> list[float]``.

Entries are factories ``make(task, **params) -> fn`` so a reward can close over its task's verifier.
``RewardSet`` combines several with weights and reports each component for logging.
"""

from __future__ import annotations

from typing import Protocol, Sequence

from workbench.errors import ConfigError
from workbench.registry import Registry


class RewardFn(Protocol):
    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **fields) -> list[float]: ...


REWARDS: Registry = Registry("reward")  # name -> factory(task, **params) -> RewardFn
register_reward = REWARDS.register


@register_reward("correctness")
def correctness(task, **_):
    """1 when the task's verifier accepts the completion's answer, else 0."""

    def fn(prompts, completions, *, answer, **_fields):
        return [1.0 if task.verify(c, a) else 0.0 for c, a in zip(completions, answer)]

    return fn


class RewardSet:
    def __init__(self, specs, task):
        self.components: list[tuple[str, float, RewardFn]] = []
        for i, spec in enumerate(specs):
            spec = dict(spec)
            name = spec.pop("name", None)
            weight = float(spec.pop("weight", 1.0))
            if name not in REWARDS:
                raise ConfigError(f"method.rewards[{i}].name", f"unknown reward '{name}'", f"choose from {sorted(REWARDS)}")
            self.components.append((name, weight, REWARDS[name](task, **spec)))
        if not self.components:
            raise ConfigError("method.rewards", "empty", "list at least one reward, e.g. [{name: correctness}]")

    def __call__(self, prompts, completions, **fields) -> tuple["torch.Tensor", dict[str, "torch.Tensor"]]:
        import torch

        parts = {name: torch.tensor(fn(prompts, completions, **fields), dtype=torch.float32) for name, _, fn in self.components}
        total = sum(weight * parts[name] for name, weight, _ in self.components)
        return total, parts
