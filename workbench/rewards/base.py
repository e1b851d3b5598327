"""The reward registry and the small helpers every reward module shares.

Kept apart from ``__init__`` so reward modules can import it without a circular import.
"""

from __future__ import annotations

import math
from typing import Protocol, Sequence

from workbench.errors import ConfigError
from workbench.registry import Registry


class RewardFn(Protocol):
    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **fields) -> list[float]: ...


REWARDS: Registry = Registry("reward")  # name -> factory(task, **params) -> RewardFn
register_reward = REWARDS.register


class RewardParamError(ConfigError):
    """A bad reward parameter. ``field`` is the bare parameter name; RewardSet re-raises it as
    ``method.rewards[i].<param>`` because only it knows the index ``i``."""

    def __init__(self, param: str, problem: str, fix: str):
        super().__init__(param, problem, fix)
        self.param, self.problem, self.fix = param, problem, fix


def check_number(param: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """``value`` as a float, or RewardParamError naming ``param``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RewardParamError(param, f"must be a finite number, got {value!r}", f"set {param} to a number")
    if low is not None and (value <= low if low_open else value < low):
        raise RewardParamError(param, f"must be {'>' if low_open else '>='} {low}, got {value!r}", f"raise {param}")
    if high is not None and value > high:
        raise RewardParamError(param, f"must be <= {high}, got {value!r}", f"lower {param}")
    return float(value)


def check_int(param: str, value, *, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RewardParamError(param, f"must be a whole number, got {value!r}", f"set {param} to an integer")
    if value < low:
        raise RewardParamError(param, f"must be >= {low}, got {value}", f"set {param} to {low} or more")
    return value


def check_choice(param: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise RewardParamError(param, f"unknown '{value}'", f"use one of {list(choices)}")
    return value


def sizes(completions: Sequence[str], completion_lengths: Sequence[int] | None) -> list[int]:
    """Token counts when the caller passes ``completion_lengths``, else character counts.

    Length rewards use this so one config works for both; token counts are what the papers use
    (DAPO, HAPO), characters are what open-r1's cosine reward uses.
    """
    if completion_lengths is None:
        return [len(c) for c in completions]
    lengths = [int(n) for n in completion_lengths]
    if len(lengths) != len(completions):
        raise ValueError(f"completion_lengths has {len(lengths)} entries for {len(completions)} completions")
    return lengths


def group_slices(n: int, group_size: int) -> list[slice]:
    """Rows [k*G:(k+1)*G] are the G samples of prompt k (the layout RewardSet documents)."""
    if group_size < 1 or n % group_size:
        raise ValueError(f"{n} completions do not split into groups of {group_size}")
    return [slice(k, k + group_size) for k in range(0, n, group_size)]


def verified(task, completions: Sequence[str], answer: Sequence[str]) -> list[bool]:
    """The task's own verifier on each completion (what ``correctness`` rewards)."""
    return [bool(task.verify(c, a)) for c, a in zip(completions, answer, strict=True)]
