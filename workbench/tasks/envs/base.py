"""Text environments: text in, text out, gym-like ``reset(seed)`` / ``step(action)``, seeded, sparse final reward.

A ``TextEnv`` keeps its own transcript (``messages``: the first observation, then action / observation
pairs), so ``prompt()`` is what the policy sees next and ``clone()`` copies a mid-episode state (VinePPO's
resampling from intermediate states). Every env also knows an expert action for the current state: the SFT warm
start imitates a noisy expert.

An ``EnvTask`` is a ``Task`` whose episodes are env seeds. Its ``splits`` (prompt / target / answer columns) hold
one row per turn of noisy expert episodes, for the SFT warm start, whose held-out accuracy is then the share of
greedy actions that equal the expert's; ``episodes(split)`` holds the seeds RL trains and evaluates on. Train,
validation and test seeds are disjoint ranges.

A plain single-turn ``Task`` (arithmetic, GSM8K, ...) plays as a one-turn environment through ``SingleTurnEnv``,
so every multi-turn method also runs on the single-turn tasks.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset, DatasetDict

from workbench.errors import ConfigError
from workbench.policy.models import hh_layout
from workbench.tasks.base import Task


@dataclass
class StepResult:
    observation: str
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


class TextEnv:
    """Subclasses set ``max_turns`` and implement ``_reset(rng) -> observation``, ``_step(action) -> StepResult``
    (``info`` keys: ``valid`` (bool), ``success`` (bool, at the end), ``process_reward`` (float in [-1, 1], a
    verifier's judgement of the step, for PURE)), ``expert_action()`` and ``random_action(rng)``.

    The base class counts turns, ends an episode at ``max_turns`` (``info["truncated"]``) and keeps the transcript.
    ``history``: how many earlier turns ``prompt()`` shows (None: all; 0: the current observation only, a Markov
    state, which makes identical states recur across episodes).
    """

    max_turns: int = 1
    history: int | None = None
    invalid_penalty: float = 0.0

    def reset(self, seed: int) -> str:
        self.seed = int(seed)
        self.turn = 0
        self.done = self.succeeded = self.truncated = False
        self.invalid_actions = 0
        observation = self._reset(random.Random(self.seed))
        self.messages = [{"role": "user", "content": observation}]
        return observation

    def step(self, action: str) -> StepResult:
        if self.done:
            raise RuntimeError("step() after the episode ended; call reset()")
        result = self._step(action)
        self.turn += 1
        result.info.setdefault("valid", True)
        if not result.info["valid"]:
            self.invalid_actions += 1
        result.info.setdefault("process_reward", 0.0)
        if not result.done and self.turn >= self.max_turns:
            result.done = True
            result.info["truncated"] = True
        result.info.setdefault("truncated", False)
        result.info.setdefault("success", False)
        self.done = result.done
        self.succeeded, self.truncated = bool(result.info["success"]), bool(result.info["truncated"])
        self.messages += [{"role": "assistant", "content": action}, {"role": "user", "content": result.observation}]
        return result

    def invalid(self, why: str) -> StepResult:
        """The answer to an unusable action: an observation saying why, a penalty, the episode goes on."""
        return StepResult(f"invalid: {why}", -self.invalid_penalty, False, {"valid": False, "process_reward": -1.0})

    def prompt(self):
        """The policy's next prompt: a message list (the last ``history`` turns and the current observation)."""
        if self.history is None:
            return list(self.messages)
        return list(self.messages[-(2 * self.history + 1):])

    def state_key(self) -> str:
        """A hashable description of the current state (GiGPO's anchor state): the current observation."""
        return self.messages[-1]["content"]

    def clone(self) -> "TextEnv":
        return copy.deepcopy(self)

    # ---- subclasses ----------------------------------------------------------------------------------------
    def _reset(self, rng: random.Random) -> str:
        raise NotImplementedError

    def _step(self, action: str) -> StepResult:
        raise NotImplementedError

    def expert_action(self) -> str:
        raise NotImplementedError

    def random_action(self, rng: random.Random) -> str:
        raise NotImplementedError


class SingleTurnEnv(TextEnv):
    """A row of a single-turn task as a one-turn environment: the prompt, one completion, reward = the verifier."""

    max_turns = 1

    def __init__(self, task: Task, row: dict):
        self.task, self.row = task, row

    def _reset(self, rng):
        return self.row["prompt"] if isinstance(self.row["prompt"], str) else self.row["prompt"][-1]["content"]

    def _step(self, action):
        ok = bool(self.task.verify(action, self.row["answer"]))
        return StepResult("", float(ok), True, {"success": ok, "process_reward": 1.0 if ok else -1.0})

    def prompt(self):
        return self.row["prompt"]  # exactly what the single-turn families (and the SFT base) see

    def expert_action(self):
        return self.row["target"]


class EnvTask(Task):
    """A task whose episodes are seeds of a ``TextEnv``; subclasses implement ``make_env()`` (an un-reset env).

    Sizes count episodes: ``train_size`` seeds for RL, ``val_size`` / ``test_size`` held-out seeds, and
    ``sft_episodes`` noisy-expert episodes (each action random with probability ``expert_noise``) whose turns
    are the SFT rows. The SFT episodes use the training seeds' range, never a held-out seed.
    """

    name = "env"
    SEED_STRIDE = 1_000_000  # split seed ranges: train [0, 1e6), validation [1e6, 2e6), test [2e6, 3e6) + task seed

    def __init__(self, train_size: int = 2000, val_size: int = 100, test_size: int = 200, sft_episodes: int = 2000,
                 expert_noise: float = 0.3, seed: int = 1234, max_new_tokens: int = 8, **_unused):
        for key, value in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size),
                           ("sft_episodes", sft_episodes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"task.{key}", f"must be a positive count, got {value!r}", f"set task.{key} to e.g. 100")
            if value >= self.SEED_STRIDE:
                raise ConfigError(f"task.{key}", f"at most {self.SEED_STRIDE - 1} episodes", f"lower task.{key}")
        if not 0.0 <= float(expert_noise) <= 1.0:
            raise ConfigError("task.expert_noise", f"must be in [0, 1], got {expert_noise}", "set a probability")
        self.sizes = {"train": train_size, "validation": val_size, "test": test_size}
        self.expert_noise = float(expert_noise)
        self.base_seed = int(seed) % self.SEED_STRIDE
        self.max_new_tokens = max_new_tokens
        self._episodes = {split: Dataset.from_dict({"seed": self._seeds(split, n)}) for split, n in self.sizes.items()}
        sft = {split: self.expert_rows(self._seeds(split, n if split == "train" else min(n, 50)), salt=i)
               for i, (split, n) in enumerate((("train", sft_episodes), ("validation", val_size), ("test", test_size)))}
        self.splits = DatasetDict({k: Dataset.from_list(v) for k, v in sft.items()})

    def _seeds(self, split: str, n: int) -> list[int]:
        offset = {"train": 0, "validation": 1, "test": 2}[split] * self.SEED_STRIDE
        return [offset + (self.base_seed + i) % self.SEED_STRIDE for i in range(n)]

    def make_env(self) -> TextEnv:
        raise NotImplementedError

    def env_for(self, row: dict) -> TextEnv:
        env = self.make_env()
        env.reset(row["seed"])
        return env

    def episodes(self, split: str) -> Dataset:
        if split not in self._episodes:
            raise ConfigError("split", f"task '{self.name}' has no split '{split}'", f"use one of {list(self._episodes)}")
        return self._episodes[split]

    def expert_rows(self, seeds: list[int], salt: int = 0) -> list[dict]:
        """One SFT row per turn of a noisy-expert episode: the prompt the policy would see and the action taken."""
        rng = random.Random(self.base_seed * 7919 + salt)
        rows = []
        for seed in seeds:
            env = self.env_for({"seed": seed})
            while not env.done:
                action = env.random_action(rng) if rng.random() < self.expert_noise else env.expert_action()
                rows.append({"prompt": env.prompt(), "target": action, "answer": action})
                env.step(action)
        return rows

    def extract_answer(self, completion: str) -> str | None:
        return completion.strip()

    def verify(self, completion: str, answer: str) -> bool:
        """Turn-level check for the SFT stage: the action equals the expert's (episodes are evaluated by success)."""
        return completion.strip() == str(answer).strip()

    def corpus(self):
        """Every text the policy will read or write, for a task-specific tokenizer: SFT turns plus the
        observations of random-action episodes (invalid-action messages included)."""
        for row in self.splits["train"]:
            yield hh_layout(row["prompt"]) + row["target"]
        rng = random.Random(self.base_seed + 17)
        for seed in self._seeds("train", 200):
            env = self.env_for({"seed": seed})
            while not env.done:
                env.step(env.random_action(rng) if rng.random() < 0.8 else "?")
            yield hh_layout(env.messages)


def env_for(task: Task, row: dict) -> TextEnv:
    """The environment of one episode row: an ``EnvTask``'s env at that seed, or a single-turn task's row."""
    if isinstance(task, EnvTask):
        return task.env_for(row)
    env = SingleTurnEnv(task, row)
    env.reset(0)
    return env


def episode_rows(task: Task, split: str) -> Dataset:
    return task.episodes(split) if isinstance(task, EnvTask) else task.split(split)
