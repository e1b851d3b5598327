"""The stated statistical rule that turns a claim's runs into a verdict (never edited by hand).

Each check compares one metric between two arms of a claim (or one arm and a constant), paired by seed:
d_s = metric(arm, s) - metric(other, s), signed so that the claimed direction is positive. With n seeds, mean m,
sample standard deviation sd, the two-sided 90 % t interval is m ± t(0.95, n-1) · sd / sqrt(n). For a claim that
one arm is better ("higher" / "lower") by at least ``min_effect``:

- not reproduced  if the interval's upper end is below ``min_effect`` (the effect, if any, is smaller than the claim),
- reproduced      else if the interval's lower end is above 0 (one-sided 95 %: the claimed sign is real),
- inconclusive    otherwise (too few seeds or too much spread to tell).

For a claim that two values are the same ("equal", within ± ``margin``), it is TOST-style:
reproduced if the whole interval lies inside (-margin, margin), not reproduced if it lies wholly outside,
inconclusive otherwise. A claim is reproduced when all its checks are, not reproduced when any check is not,
inconclusive otherwise. One seed gives no interval: inconclusive.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
DIRECTIONS = ("higher", "lower", "equal")
CONFIDENCE = 0.90

RULE = (f"paired by seed, two-sided {CONFIDENCE:.0%} t interval of the difference in the claimed direction: not reproduced "
        "if its upper end is below the claim's minimum effect, else reproduced if its lower end is above 0; for \"equal\" "
        "claims reproduced if the interval lies inside ± margin, not reproduced if wholly outside; inconclusive "
        "otherwise (and with one seed). A claim is reproduced when every check is, not reproduced when any check is not.")


def t_quantile(dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(1 - (1 - CONFIDENCE) / 2, dof))


@dataclass(frozen=True)
class CheckResult:
    differences: tuple[float, ...]  # per seed, signed so that the claimed direction is positive ("equal": raw)
    mean: float
    low: float
    high: float
    verdict: str


def interval(differences: list[float]) -> tuple[float, float, float]:
    n = len(differences)
    mean = statistics.fmean(differences)
    if n < 2:
        return mean, -math.inf, math.inf
    half = t_quantile(n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return mean, mean - half, mean + half


def judge(differences: list[float], direction: str, min_effect: float = 0.0, margin: float = 0.0) -> CheckResult:
    """``differences``: arm minus other per seed (raw sign); flipped here for "lower" claims."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if not differences:
        return CheckResult((), math.nan, -math.inf, math.inf, INCONCLUSIVE)
    signed = [-d for d in differences] if direction == "lower" else list(differences)
    mean, low, high = interval(signed)
    if direction == "equal":
        if -margin < low and high < margin:
            verdict = REPRODUCED
        elif high <= -margin or low >= margin:
            verdict = NOT_REPRODUCED
        else:
            verdict = INCONCLUSIVE
    elif high < min_effect:  # first: an effect surely smaller than the claim's is not the claim, however sure its sign
        verdict = NOT_REPRODUCED
    elif low > 0:
        verdict = REPRODUCED
    else:
        verdict = INCONCLUSIVE
    return CheckResult(tuple(signed), mean, low, high, verdict)


def overall(verdicts: list[str]) -> str:
    if verdicts and all(v == REPRODUCED for v in verdicts):
        return REPRODUCED
    if any(v == NOT_REPRODUCED for v in verdicts):
        return NOT_REPRODUCED
    return INCONCLUSIVE
