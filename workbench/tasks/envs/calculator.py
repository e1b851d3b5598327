"""Tool use: solve an arithmetic problem, calling a calculator when it pays.

Each episode's problem is drawn from its seed: with probability ``hard_frac`` a hard one (two 2-digit numbers
multiplied, "37*58"), else an easy one (two 1-digit numbers added, "3+4"). Actions: ``calc <expr>`` runs the
calculator (observation ``= <value>``; digits and + - * only, parsed here, never ``eval``'d), ``answer <n>`` ends
the episode. The final reward follows OTC-PPO (arXiv 2504.14870):

    reward = correct * cos(m * pi / (2m + c))     m = calculator calls so far, c = ``tool_smooth``

so a right answer with no call earns 1, with one call cos(pi/4) = 0.71 at c = 2. ``info["success"]`` is the
answer's correctness whatever the calls. The expert is deliberately tool-happy: it calls the calculator on every
problem, easy ones included, so RL after the SFT warm start has something to learn (skip the call when the sum is
easy). The process reward (for PURE) is +1 for a calculation equal in value to the problem or a right answer, -1
otherwise. Unusable actions (a bad expression, no number after ``answer``) get a penalty and a hint.
"""

from __future__ import annotations

import random
import re

from workbench.errors import ConfigError
from workbench.rewards.tools import otc_ppo_tool_reward
from workbench.tasks.envs.base import EnvTask, StepResult, TextEnv

COMMAND = re.compile(r"\s*(calc|answer)\s+(.+?)\s*", re.S)
ANSWER = re.compile(r"-?\d{1,9}")
# Bounded literals and length keep every value small (at most ~40 digits): no "2**99999", nothing to exhaust.
EXPRESSION = re.compile(r"\d{1,6}(?:\s*[-+*]\s*\d{1,6})*")
MAX_EXPRESSION = 40


def evaluate(expr: str) -> int | None:
    """The value of a sum of products of non-negative integers ("2+3*4" -> 14), or None for anything else."""
    expr = expr.strip()
    if len(expr) > MAX_EXPRESSION or not EXPRESSION.fullmatch(expr):
        return None
    tokens = re.findall(r"\d+|[-+*]", expr)  # number (op number)*, guaranteed by EXPRESSION
    total, sign, term = 0, 1, int(tokens[0])
    for op, number in zip(tokens[1::2], tokens[2::2]):
        if op == "*":  # binds tighter: extends the current term
            term *= int(number)
        else:
            total += sign * term
            sign, term = (1 if op == "+" else -1), int(number)
    return total + sign * term


class Calculator(TextEnv):
    def __init__(self, hard_frac: float = 0.5, tool_smooth: float = 2.0, max_turns: int = 3,
                 history: int | None = None, invalid_penalty: float = 0.1):
        self.hard_frac, self.tool_smooth = hard_frac, tool_smooth
        self.max_turns, self.history, self.invalid_penalty = max_turns, history, invalid_penalty

    def _reset(self, rng: random.Random) -> str:
        self.hard = rng.random() < self.hard_frac
        if self.hard:
            self.problem = f"{rng.randint(10, 99)}*{rng.randint(10, 99)}"
        else:
            self.problem = f"{rng.randint(1, 9)}+{rng.randint(1, 9)}"
        self.value = evaluate(self.problem)
        self.calls = 0
        return f"Solve {self.problem}. Use: calc <expr> or answer <n>"

    def _step(self, action: str) -> StepResult:
        match = COMMAND.fullmatch(action)
        if match is None:
            return self._invalid("say calc <expr> or answer <n>")
        command, argument = match.groups()
        if command == "calc":
            value = evaluate(argument)
            if value is None:
                return self._invalid("calc takes digits and + - * only")
            self.calls += 1
            return StepResult(f"= {value}", 0.0, False,
                              {"process_reward": 1.0 if value == self.value else -1.0, "tool_calls": self.calls})
        if not ANSWER.fullmatch(argument):
            return self._invalid("answer takes a whole number")
        correct = int(argument) == self.value
        reward = float(correct) * otc_ppo_tool_reward(self.calls, self.tool_smooth)
        return StepResult("correct" if correct else "wrong", reward, True,
                          {"success": correct, "process_reward": 1.0 if correct else -1.0, "tool_calls": self.calls})

    def _invalid(self, why: str) -> StepResult:
        result = self.invalid(why)  # an unusable calc is not a calculator call: m counts calls that ran
        result.info["tool_calls"] = self.calls
        return result

    def state_key(self) -> str:
        """The current observation plus the calls made: the same observation after more calls is worth less."""
        return f"{self.messages[-1]['content']} | calls {self.calls}"

    def expert_action(self) -> str:
        """Calculate the problem first (even an easy one), then answer; answer at once if no turn would be left."""
        if self.calls == 0 and self.max_turns - self.turn >= 2:
            return f"calc {self.problem}"
        return f"answer {self.value}"

    def random_action(self, rng: random.Random) -> str:
        if rng.random() < 0.5:
            return f"calc {rng.randint(1, 99)}{rng.choice('+-*')}{rng.randint(1, 99)}"
        return f"answer {rng.randint(0, 99 if self.hard else 18)}"


class CalculatorTask(EnvTask):
    name = "calculator"

    def __init__(self, hard_frac: float = 0.5, tool_smooth: float = 2.0, max_turns: int = 3,
                 history: int | None = None, invalid_penalty: float = 0.1, **kwargs):
        def number(value):
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        if not number(hard_frac) or not 0.0 <= hard_frac <= 1.0:
            raise ConfigError("task.hard_frac", f"must be a probability in [0, 1], got {hard_frac!r}",
                              "set task.hard_frac=0.5")
        if not number(tool_smooth) or tool_smooth <= 0:
            raise ConfigError("task.tool_smooth", f"must be a number > 0 (OTC's c), got {tool_smooth!r}",
                              "set task.tool_smooth=2.0")
        if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
            raise ConfigError("task.max_turns", f"must be a positive integer, got {max_turns!r}", "set task.max_turns=3")
        if history is not None and (isinstance(history, bool) or not isinstance(history, int) or history < 0):
            raise ConfigError("task.history", f"must be null (whole transcript) or an integer >= 0, got {history!r}",
                              "set task.history=null")
        if not number(invalid_penalty) or invalid_penalty < 0:
            raise ConfigError("task.invalid_penalty", f"must be a number >= 0, got {invalid_penalty!r}",
                              "set task.invalid_penalty=0.1")
        self.env_args = dict(hard_frac=float(hard_frac), tool_smooth=float(tool_smooth), max_turns=max_turns,
                             history=history, invalid_penalty=float(invalid_penalty))
        super().__init__(**kwargs)

    def make_env(self) -> Calculator:
        return Calculator(**self.env_args)
