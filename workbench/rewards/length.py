"""Length-shaped rewards. Length L is the token count when the caller passes ``completion_lengths``,
else the character count (see ``base.sizes``); set ``max_length``-style params in the same unit."""

from __future__ import annotations

import math

from workbench.rewards.base import RewardParamError, check_int, check_number, register_reward, sizes, verified


@register_reward("length")
def length_reward(task, max_length: int = 512, coef: float = -1.0):
    """Linear in length: r = coef * min(L, max_length) / max_length.

    coef < 0 is a length penalty in [coef, 0] (0 for an empty completion, coef at max_length and
    beyond); coef > 0 is a bonus for longer answers. Clipped at max_length so one runaway sample
    cannot dominate a group.
    """
    max_length = check_int("max_length", max_length, low=1)
    coef = check_number("coef", coef)

    def fn(prompts, completions, *, completion_lengths=None, **_fields):
        return [coef * min(n, max_length) / max_length for n in sizes(completions, completion_lengths)]

    return fn


@register_reward("soft_overlong")
def soft_overlong(task, max_length: int = 512, cache_length: int = 128):
    """DAPO soft overlong punishment (Yu et al. 2025, Eq. 13; TRL ``get_soft_overlong_punishment``):

        r = 0                                   if L <= L_max - L_cache
        r = ((L_max - L_cache) - L) / L_cache   if L_max - L_cache < L <= L_max
        r = -1                                  if L > L_max

    params: max_length = L_max, cache_length = L_cache (0 turns the ramp into a step at L_max).
    Meant to be added to the correctness reward (weight 1 in the paper).
    """
    max_length = check_int("max_length", max_length, low=1)
    cache_length = check_int("cache_length", cache_length, low=0)
    if cache_length > max_length:
        raise RewardParamError("cache_length", f"must be <= max_length ({max_length}), got {cache_length}",
                               "lower cache_length")
    start = max_length - cache_length

    def one(n: int) -> float:
        if n <= start:
            return 0.0
        if n <= max_length:
            return (start - n) / cache_length
        return -1.0

    def fn(prompts, completions, *, completion_lengths=None, **_fields):
        return [one(n) for n in sizes(completions, completion_lengths)]

    return fn


@register_reward("cosine_length")
def cosine_length(task, min_value_wrong: float = -1.0, max_value_wrong: float = -0.5,
                  min_value_correct: float = 0.5, max_value_correct: float = 1.0, max_len: int = 1000):
    """Cosine length-scaled correctness (Yeo et al. 2025 "Demystifying Long CoT"; open-r1
    ``get_cosine_scaled_reward``, used by Dang & Ngo 2025 / open-rs with weight 2):

        p = min(L, max_len) / max_len,   c = cos(pi * p)
        correct: r = min_value_correct + 0.5 * (max_value_correct - min_value_correct) * (1 + c)
        wrong:   r = max_value_wrong   + 0.5 * (min_value_wrong   - max_value_wrong)   * (1 + c)

    So a correct answer earns max_value_correct at L=0 falling to min_value_correct at max_len; a
    wrong one is punished hardest when short (min_value_wrong at L=0) and least at max_len
    (max_value_wrong). Defaults are open-r1's. Correctness is the task's verifier. Deviation:
    open-r1 does not clip p, so past max_len its cosine turns back up; we clip at max_len.
    """
    values = {k: check_number(k, v) for k, v in dict(
        min_value_wrong=min_value_wrong, max_value_wrong=max_value_wrong,
        min_value_correct=min_value_correct, max_value_correct=max_value_correct).items()}
    max_len = check_int("max_len", max_len, low=1)

    def fn(prompts, completions, *, answer, completion_lengths=None, **_fields):
        out = []
        for ok, n in zip(verified(task, completions, answer), sizes(completions, completion_lengths)):
            cosine = math.cos(math.pi * min(n, max_len) / max_len)
            low, high = ((values["min_value_correct"], values["max_value_correct"]) if ok
                         else (values["max_value_wrong"], values["min_value_wrong"]))
            out.append(low + 0.5 * (high - low) * (1.0 + cosine))
        return out

    return fn


class HistoryAwareLength:
    """HAPO length reward (Huang, Zhang, Cardie 2025; official ``HCY123902/HAPO`` utils.py
    ``compute_len_reward`` and grpo_trainer.py ``combined_reward_func``).

    Per prompt the history h = the minimum length of all *earlier* correct answers (``mode="min"``).

        h undefined (no correct answer yet) -> r = 0
        f = cos(pi/2 * L / h) if L < 2h else -1
        correct -> r = max(-0.7, f);   wrong -> r = min(0, f)

    Shorter-than-history correct answers earn up to +1, short wrong ones are not punished (min(0, f)
    is 0 for L <= h), and a correct answer never scores below -0.7 so it stays above any wrong one
    once ``correctness`` (weight 1, the paper's w=1 combination r_corr + w * r_len) is added.
    As in the official code the batch is scored against the history from before it, then the
    history is lowered with this batch's correct lengths.

    State: {"history": {key: h}}; key = the prompt text, or the task field ``key_field`` (e.g. an id).
    """

    def __init__(self, task, key_field: str | None = None, correct_floor: float = -0.7):
        self.task = task
        self.key_field = key_field
        self.correct_floor = check_number("correct_floor", correct_floor, low=-1.0, high=0.0)
        self.history: dict[str, int] = {}

    def length_reward(self, n: int, ok: bool, h: int | None) -> float:
        if h is None or h <= 0:  # the official code treats h <= 0 as "no history" too
            return 0.0
        f = math.cos(math.pi / 2 * n / h) if n < 2 * h else -1.0
        return max(self.correct_floor, f) if ok else min(0.0, f)

    def __call__(self, prompts, completions, *, answer, completion_lengths=None, **fields):
        keys = prompts if self.key_field is None else fields[self.key_field]
        keys = [str(k) for k in keys]
        oks = verified(self.task, completions, answer)
        lengths = sizes(completions, completion_lengths)
        rewards = [self.length_reward(n, ok, self.history.get(k)) for k, n, ok in zip(keys, lengths, oks)]
        for k, n, ok in zip(keys, lengths, oks):
            if ok:
                self.history[k] = min(n, self.history.get(k, n))
        return rewards

    def state_dict(self) -> dict:
        return {"history": dict(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = {str(k): int(v) for k, v in state.get("history", {}).items()}


@register_reward("hapo_length")
def hapo_length(task, key_field: str | None = None, correct_floor: float = -0.7):
    """See ``HistoryAwareLength``: stateful; RewardSet.state_dict() carries its history."""
    return HistoryAwareLength(task, key_field=key_field, correct_floor=correct_floor)
