"""Reward registry and ``RewardSet``, the weighted combination group-RL methods optimise.

Interface
---------
A registry entry is a factory ``make(task, **params) -> fn``; ``fn(prompts, completions, **fields)``
returns one float per completion. What ``fn`` receives:

* ``prompts``, ``completions``: equal-length lists of str. Completions arrive grouped contiguously:
  rows ``[k*G:(k+1)*G]`` are the G samples of prompt k (``prompts`` repeats accordingly).
* task fields (``answer``, ``target``, ``references``, ...): lists aligned with ``completions``.
* ``group_size`` (int, default 1): always passed by RewardSet; group-aware rewards (``tool_cost``)
  use it, the others ignore it through ``**fields``.
* ``completion_lengths`` (list[int] of token counts) when the caller has them; length rewards use
  token lengths when given and fall back to character lengths otherwise.

``RewardSet(specs, task, aggregation="weighted_sum")`` builds the entries listed in ``method.rewards``
(``[{name: correctness, weight: 1.0, <params>}, ...]``) and returns ``(total, parts)``: ``total`` is a
float tensor (N,), ``parts`` maps each entry's name to its *unweighted* (N,) tensor for logging.
Aggregation: ``weighted_sum`` total = sum_k w_k r_k; ``normalize_then_sum`` standardises each
component inside every group first (TRL ``GRPOTrainer(multi_objective_aggregation=
"normalize_then_sum")``), so a reward on a large scale cannot drown the others.

Stateful rewards (``hapo_length``) expose ``state_dict()/load_state_dict()``; ``RewardSet.state_dict()``
gathers them as plain JSON-able data for checkpoints.

Registered: correctness, exact_answer, math_verify, format (verifiable.py); length, soft_overlong,
cosine_length, hapo_length (length.py); bleu (text.py); tool_cost (tools.py); reward_model (model.py);
spo_win_rate, judge_score (preference.py: judges of workbench/rewards/judges.py as rewards).
"""

from __future__ import annotations

import inspect
from typing import Sequence

from workbench.errors import ConfigError
from workbench.rewards.base import REWARDS, RewardFn, RewardParamError, register_reward
from workbench.rewards import length, model, preference, text, tools, verifiable  # noqa: F401  (register entries)
from workbench.rewards.verifiable import correctness

AGGREGATIONS = ("weighted_sum", "normalize_then_sum")


def _accepted_params(factory) -> set[str] | None:
    """Keyword params a factory takes besides ``task``; None when it takes any (``**kwargs``)."""
    params = list(inspect.signature(factory).parameters.values())[1:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def _build(i: int, spec, task) -> tuple[str, float, RewardFn]:
    if not hasattr(spec, "keys"):
        raise ConfigError(f"method.rewards[{i}]", f"must be a mapping, got {spec!r}",
                          "write each reward as {name: correctness, weight: 1.0}")
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in REWARDS:
        raise ConfigError(f"method.rewards[{i}].name", f"unknown reward '{name}'", f"choose from {sorted(REWARDS)}")
    weight = spec.pop("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ConfigError(f"method.rewards[{i}].weight", f"must be a number, got {weight!r}", "e.g. weight: 1.0")
    factory = REWARDS[name]
    accepted = _accepted_params(factory)
    if accepted is not None:
        for key in spec:
            if key not in accepted:
                raise ConfigError(f"method.rewards[{i}].{key}", f"reward '{name}' has no parameter '{key}'",
                                  f"use only {sorted(accepted) or 'name and weight'}")
    try:
        fn = factory(task, **spec)
    except RewardParamError as e:
        raise ConfigError(f"method.rewards[{i}].{e.param}", e.problem, e.fix) from None
    return name, float(weight), fn


def _group_standardise(values, group_size: int):
    """(r - group mean) / (group std + 1e-4), std with Bessel's correction; 0 for groups of one.

    Same as TRL 1.16 ``normalize_then_sum`` (grpo_trainer.py: ``(grouped - mean_k) / (std_k + 1e-4)``,
    ``nanstd`` unbiased, ``std_k = 0`` when ``num_generations == 1``).
    """
    import torch

    grouped = values.view(-1, group_size)
    mean = grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    return ((grouped - mean) / (std + 1e-4)).reshape(-1)


class RewardSet:
    def __init__(self, specs, task, aggregation: str = "weighted_sum"):
        if aggregation not in AGGREGATIONS:
            raise ConfigError("method.reward_aggregation", f"unknown '{aggregation}'", f"use one of {list(AGGREGATIONS)}")
        self.aggregation = aggregation
        # (part name, weight, fn); a repeated reward name is logged as name@i so parts never collide
        self.components: list[tuple[str, float, RewardFn]] = []
        for i, spec in enumerate(specs or []):
            name, weight, fn = _build(i, spec, task)
            if any(part == name for part, _, _ in self.components):
                name = f"{name}@{i}"
            self.components.append((name, weight, fn))
        if not self.components:
            raise ConfigError("method.rewards", "empty", "list at least one reward, e.g. [{name: correctness}]")

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], group_size: int = 1,
                 **fields) -> tuple["torch.Tensor", dict[str, "torch.Tensor"]]:
        import torch

        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions (repeat each prompt G times)")
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or n % group_size:
            raise ValueError(f"{n} completions do not split into groups of group_size={group_size!r}")
        for key, values in fields.items():
            if values is not None and len(values) != n:
                raise ValueError(f"task field '{key}' has {len(values)} entries for {n} completions")
        parts: dict[str, torch.Tensor] = {}
        for name, _, fn in self.components:
            values = fn(list(prompts), list(completions), group_size=group_size, **fields)
            if len(values) != n:
                raise ValueError(f"reward '{name}' returned {len(values)} values for {n} completions")
            parts[name] = torch.tensor([float(v) for v in values], dtype=torch.float32)
        if self.aggregation == "normalize_then_sum":
            scaled = {name: _group_standardise(parts[name], group_size) for name in parts}
        else:
            scaled = parts
        total = torch.zeros(n, dtype=torch.float32)
        for name, weight, _ in self.components:
            total = total + weight * scaled[name]
        return total, parts

    # ---- state of stateful rewards (HAPO history), for checkpoint + resume ------------------------------
    def _stateful(self) -> dict[str, object]:
        return {name: fn for name, _, fn in self.components if hasattr(fn, "state_dict")}

    def state_dict(self) -> dict:
        """{part name: component state} for every stateful component; JSON-able python data."""
        return {name: fn.state_dict() for name, fn in self._stateful().items()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Restore what ``state_dict`` returned. strict: the stateful components must match exactly,
        so a resumed run cannot silently restart a history from scratch."""
        stateful = self._stateful()
        missing, unexpected = sorted(set(stateful) - set(state)), sorted(set(state) - set(stateful))
        if strict and (missing or unexpected):
            raise ValueError(f"reward state does not match the rewards: missing {missing}, unexpected {unexpected}")
        for name, fn in stateful.items():
            if name in state:
                fn.load_state_dict(state[name])


__all__ = ["REWARDS", "RewardFn", "RewardSet", "correctness", "register_reward", "AGGREGATIONS"]
