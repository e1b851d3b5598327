"""Guess the number: an information-gathering game. A hidden integer in 1..N is drawn from the episode seed.

Actions are short so a tiny model can emit them: ``> k`` asks "is it greater than k?" (observation ``yes`` /
``no``), ``= k`` is the final guess (the episode ends; reward 1 and success if right, ``right`` / ``wrong``).
Anything else, or k outside 1..N, gets a penalty and a hint, and costs the turn. The policy sees the whole
transcript (``history: None``): the answers so far are the only memory of what is known.

With N = 8 and 5 turns, binary search (3 questions, then the guess) always wins, while guessing blindly wins
1 time in 8: the reward is sparse and only questions that split the candidates lead to it. The process reward
(for PURE) is +1 for a question that splits the candidates still consistent with the answers into two non-empty
parts, or for a right guess; -1 for an uninformative question, a wrong guess or an invalid action.
"""

from __future__ import annotations

import random
import re

from workbench.errors import ConfigError
from workbench.tasks.envs.base import EnvTask, StepResult, TextEnv

ACTION = re.compile(r"\s*([>=])\s*(\d{1,6})\s*")  # bounded digits: int() of a huge string raises


class GuessNumber(TextEnv):
    def __init__(self, max_number: int = 8, max_turns: int = 5, history: int | None = None,
                 invalid_penalty: float = 0.1):
        self.max_number = max_number
        self.max_turns, self.history, self.invalid_penalty = max_turns, history, invalid_penalty

    def _reset(self, rng: random.Random) -> str:
        self.number = rng.randint(1, self.max_number)
        self.lo, self.hi = 1, self.max_number  # the candidates consistent with every answer so far
        return f"Guess my number, 1 to {self.max_number}."

    def _step(self, action: str) -> StepResult:
        match = ACTION.fullmatch(action)
        if match is None or not 1 <= int(match.group(2)) <= self.max_number:
            return self.invalid(f"ask > k or guess = k, k in 1..{self.max_number}")
        op, k = match.group(1), int(match.group(2))
        if op == "=":
            right = k == self.number
            return StepResult("right" if right else "wrong", float(right), True,
                              {"success": right, "process_reward": 1.0 if right else -1.0})
        # "> k" splits lo..hi into lo..k and k+1..hi; informative only when both halves are non-empty
        informative = self.lo <= k < self.hi
        greater = self.number > k
        if greater:
            self.lo = max(self.lo, k + 1)
        else:
            self.hi = min(self.hi, k)
        return StepResult("yes" if greater else "no", 0.0, False, {"process_reward": 1.0 if informative else -1.0})

    def state_key(self) -> str:
        """The knowledge state: the consistent interval and the turns used (the transcripts that lead to it vary)."""
        return f"{self.lo}..{self.hi} turn {self.turn}"

    def expert_action(self) -> str:
        """Binary search: ask "> mid" until one candidate remains, then guess it; on the last turn guess the middle."""
        mid = (self.lo + self.hi) // 2
        if self.lo == self.hi or self.max_turns - self.turn <= 1:
            return f"= {mid}"
        return f"> {mid}"

    def random_action(self, rng: random.Random) -> str:
        return f"{rng.choice('>=')} {rng.randint(1, self.max_number)}"


class GuessNumberTask(EnvTask):
    name = "guess_number"

    def __init__(self, max_number: int = 8, max_turns: int = 5, history: int | None = None,
                 invalid_penalty: float = 0.1, **kwargs):
        if isinstance(max_number, bool) or not isinstance(max_number, int) or max_number < 2:
            raise ConfigError("task.max_number", f"must be an integer >= 2, got {max_number!r}", "set task.max_number=8")
        if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
            raise ConfigError("task.max_turns", f"must be a positive integer, got {max_turns!r}", "set task.max_turns=5")
        if history is not None and (isinstance(history, bool) or not isinstance(history, int) or history < 0):
            raise ConfigError("task.history", f"must be null (whole transcript) or an integer >= 0, got {history!r}",
                              "set task.history=null: the answers so far are the game's memory")
        if not isinstance(invalid_penalty, (int, float)) or isinstance(invalid_penalty, bool) or invalid_penalty < 0:
            raise ConfigError("task.invalid_penalty", f"must be a number >= 0, got {invalid_penalty!r}",
                              "set task.invalid_penalty=0.1")
        self.env_args = dict(max_number=max_number, max_turns=max_turns, history=history,
                             invalid_penalty=float(invalid_penalty))
        super().__init__(**kwargs)

    def make_env(self) -> GuessNumber:
        return GuessNumber(**self.env_args)
