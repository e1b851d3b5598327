"""Rule-based rewards: the task's verifier, math-verify equivalence, and a format regex."""

from __future__ import annotations

import re
import threading

from workbench.rewards.base import RewardParamError, register_reward, verified

# R1 / open-r1 ``format_reward``: reasoning in <think>, the final answer in <answer>.
R1_FORMAT = r"^<think>.*?</think>\s*<answer>.*?</answer>$"


@register_reward("correctness")
def correctness(task):
    """r = 1 when the task's verifier accepts the completion's answer, else 0."""

    def fn(prompts, completions, *, answer, **_fields):
        return [float(ok) for ok in verified(task, completions, answer)]

    return fn


@register_reward("exact_answer")
def exact_answer(task):
    """r = 1[normalize(extract(completion)) == normalize(answer)], else 0.

    Same computation as ``correctness`` (``task.verify`` extracts the answer and compares the
    normalized forms, e.g. numbers through ``normalize_number``); the second name states the
    semantics in configs that mix it with softer rewards such as ``math_verify``.
    """
    return correctness(task)


def _timeouts() -> tuple[int | None, int | None]:
    # math-verify enforces its timeouts with signal.alarm, which only the main thread may set;
    # elsewhere (a dataloader or reward thread) we run without a timeout rather than crash.
    return (5, 5) if threading.current_thread() is threading.main_thread() else (None, None)


def parse_gold(answer: str):
    """Gold answers are bare LaTeX (MATH-500: ``\\frac{14}{3}``); wrapped in ``$..$`` math-verify
    reads them as LaTeX, with the raw string as a fallback."""
    from math_verify import parse

    parse_timeout, _ = _timeouts()
    for text in (f"${answer}$", answer):
        try:
            gold = parse(text, parsing_timeout=parse_timeout)
        except Exception:  # noqa: BLE001 - a parser failure means "no gold", never a crash
            gold = []
        if gold:
            return gold
    return []


def math_equivalent(completion: str, answer: str) -> bool:
    """True when math-verify finds the completion's final answer (``\\boxed{}`` first, else the last
    LaTeX/plain expression) equivalent to the gold answer. Parse failures and timeouts -> False.

    Source: huggingface/Math-Verify README (``parse`` gold and prediction, ``verify(gold, pred)``).
    Runs offline: math-verify is pure python + sympy.
    """
    from math_verify import parse, verify

    parse_timeout, verify_timeout = _timeouts()
    gold = parse_gold(answer)
    if not gold or not completion.strip():
        return False
    try:
        predicted = parse(completion, parsing_timeout=parse_timeout)
        return bool(predicted) and bool(verify(gold, predicted, timeout_seconds=verify_timeout))
    except Exception:  # noqa: BLE001 - timeouts and sympy errors score as wrong
        return False


@register_reward("math_verify")
def math_verify_reward(task):
    """r = 1 if math-verify judges the completion's final answer equivalent to ``answer``, else 0.

    Equivalence is symbolic (``1/2`` == ``0.5`` == ``\\frac{1}{2}``), the way open-r1's
    ``accuracy_reward`` scores math; a gold answer that does not parse scores 0 (not 1 as in
    open-r1), so a broken record can never hand out reward.
    """

    def fn(prompts, completions, *, answer, **_fields):
        return [float(math_equivalent(c, a)) for c, a in zip(completions, answer, strict=True)]

    return fn


@register_reward("format")
def format_reward(task, pattern: str = R1_FORMAT):
    """r = 1 if the whole (stripped) completion matches ``pattern``, else 0.

    Default: ``<think>...</think>`` then ``<answer>...</answer>``, as open-r1 ``format_reward``
    (DeepSeek-R1 §2.2.2 format reward), matched with DOTALL so the parts may span lines.
    """
    try:
        regex = re.compile(pattern, re.DOTALL)
    except (re.error, TypeError) as e:
        raise RewardParamError("pattern", f"not a valid regular expression ({e})", "fix the regex") from None

    def fn(prompts, completions, **_fields):
        return [1.0 if regex.fullmatch(c.strip()) else 0.0 for c in completions]

    return fn
