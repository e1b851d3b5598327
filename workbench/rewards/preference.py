"""Judge-derived rewards: SPO's win rate within the group, and a judge's own score.

``spo_win_rate`` (Swamy et al. 2024, "A Minimaximalist Approach to RLHF", SPO): for each prompt's G samples,
sample i's reward is the fraction of the other G-1 samples of its group that it beats under a judge,

    r_i = 1/(G-1) * sum_{j != i} P(y_i > y_j | x),    P from ``Judge.prefer`` (ties count 1/2).

Every sample is scored by the judge once and each pair's preference follows from the two scores
(``Judge.group_preferences``), so P(y_j > y_i) = 1 - P(y_i > y_j) and the rewards of a group average to 1/2. Any group-RL update can then
optimise it (conf/method/spo.yaml uses GRPO's). The paper's recipe (win proportion as reward, any RL optimiser)
is CONFIRMED-paper in METHODS.md A10.

``judge_score``: the judge's scalar ``Judge.score`` as the reward (the synthetic task's oracle reward, a reward
model, ...), what RLHF-style methods such as SALSA optimise.

``judge`` (both): a judge spec as in ``method.judge`` (``{name: oracle}``, ``{name: reward, reward: correctness}``,
``{name: reward_model, path: ...}``); default: the task's oracle when it has one, else the task's verifier.
"""

from __future__ import annotations

import torch

from workbench.rewards.base import RewardParamError, group_slices, register_reward


def default_judge_spec(task) -> dict:
    return {"name": "oracle"} if hasattr(task, "oracle_reward") else {"name": "reward", "reward": "correctness"}


def group_win_rates(judge, prompts, completions, group_size: int, **fields) -> torch.Tensor:
    """(N,) mean win rate of each sample against the others of its group (rows [k*G:(k+1)*G] = prompt k)."""
    n = len(completions)
    if group_size < 2:
        return torch.full((n,), 0.5)
    group_slices(n, group_size)  # the layout check: n must split into groups
    fields = {k: v for k, v in fields.items() if v is not None and len(v) == n}
    prefs, _ = judge.group_preferences(list(prompts), list(completions), group_size, **fields)
    return ((prefs.sum(-1) - 0.5) / (group_size - 1)).flatten()  # the diagonal (itself) contributes 1/2


def _judge(task, judge):
    from workbench.errors import ConfigError
    from workbench.rewards.judges import build_judge

    if judge is None:
        spec = default_judge_spec(task)
    elif isinstance(judge, str):
        spec = {"name": judge}
    elif hasattr(judge, "keys"):
        spec = dict(judge)
    else:
        raise RewardParamError("judge", f"must be a judge spec, got {judge!r}", "e.g. judge: {name: oracle}")
    try:
        built = build_judge(spec, task)
    except ConfigError as e:
        raise RewardParamError("judge", str(e), "set judge to a judge spec, e.g. {name: oracle} or "
                               "{name: reward, reward: correctness}") from None
    return built


@register_reward("spo_win_rate")
def spo_win_rate(task, judge: dict | None = None):
    built = _judge(task, judge)

    def fn(prompts, completions, group_size: int = 1, **fields):
        fields.pop("completion_lengths", None)
        return group_win_rates(built, prompts, completions, group_size, **fields).tolist()

    return fn


@register_reward("judge_score")
def judge_score(task, judge: dict | None = None):
    built = _judge(task, judge)

    def fn(prompts, completions, group_size: int = 1, **fields):
        fields.pop("completion_lengths", None)
        return [float(v) for v in built.score(list(prompts), list(completions), **fields)]

    return fn
