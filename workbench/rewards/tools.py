"""Tool-use efficiency rewards (OTC)."""

from __future__ import annotations

import math
import re

from workbench.rewards.base import (RewardParamError, check_choice, check_number, group_slices,
                                    register_reward, verified)


def otc_ppo_tool_reward(m: int, smooth: float) -> float:
    """OTC-PPO: r_tool = cos(m * pi / (2m + c)); 1 for no call, decaying towards 0 as m grows."""
    return math.cos(m * math.pi / (2 * m + smooth))


def otc_grpo_tool_reward(m: int, n: int, smooth: float) -> float:
    """OTC-GRPO with n = the fewest calls among the group's correct samples:

        f(m, n) = 0 if m = n = 0;  m if n = 0;  2nm / (m + n) otherwise   (maps m in [0, inf) onto [0, 2n))
        r_tool  = 1 if f = n = 0;  cos(m * pi / (2m + c)) if n = 0;  sin(f * pi / (2n)) otherwise

    So using exactly n calls earns 1, both fewer (m -> 0) and more (m -> inf) calls earn towards 0.
    """
    if n == 0:
        return 1.0 if m == 0 else otc_ppo_tool_reward(m, smooth)
    f = 2 * n * m / (m + n)
    return math.sin(f * math.pi / (2 * n))


@register_reward("tool_cost")
def tool_cost(task, mode: str = "grpo", alpha: float = 1.0, smooth: float = 1.0, pattern: str = "<tool_call>"):
    """OTC tool-integrated reward (Wang et al. 2025, "Acting Less is Reasoning More!" / "OTC: Optimal
    Tool Calls via RL", arXiv 2504.14870):  r = alpha * r_tool * r_correct.

    r_correct is the task's verifier (0/1), so a wrong answer scores 0 whatever its calls; use this
    *instead of* ``correctness``. m = the number of non-overlapping matches of ``pattern`` (default
    ``<tool_call>``, the Qwen/Hermes tool-call tag) in the completion.
    mode="ppo": r_tool = cos(m*pi/(2m+c)) (no group needed). mode="grpo": the optimal count n is the
    fewest calls among the correct samples of the same prompt's group (needs ``group_size``); see
    ``otc_grpo_tool_reward``. f(m, n) and the case split follow the paper's Eq. for OTC-GRPO as
    reproduced in public reimplementations (``map_to_2n``); the paper's alpha and c are not stated
    in the sources checked: alpha=1 and c=1 here are our defaults (``smooth`` = c).
    """
    mode = check_choice("mode", mode, ("grpo", "ppo"))
    alpha = check_number("alpha", alpha)
    smooth = check_number("smooth", smooth, low=0.0, low_open=True)
    try:
        regex = re.compile(pattern)
    except (re.error, TypeError) as e:
        raise RewardParamError("pattern", f"not a valid regular expression ({e})", "fix the regex") from None

    def fn(prompts, completions, *, answer, group_size: int = 1, **_fields):
        oks = verified(task, completions, answer)
        calls = [len(regex.findall(c)) for c in completions]
        out = [0.0] * len(completions)
        for rows in group_slices(len(completions), group_size):
            correct_calls = [m for m, ok in zip(calls[rows], oks[rows]) if ok]
            n = min(correct_calls) if correct_calls else None
            for i in range(rows.start, rows.stop):
                if not oks[i]:
                    continue
                r_tool = (otc_ppo_tool_reward(calls[i], smooth) if mode == "ppo"
                          else otc_grpo_tool_reward(calls[i], n, smooth))
                out[i] = alpha * r_tool
        return out

    return fn
