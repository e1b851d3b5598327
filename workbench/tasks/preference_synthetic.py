"""A preference task with a known oracle: 'a+b=' answered by candidates a+b+d, d in [-K, K].

Oracle reward r(x, y) = -|y - (a+b)| / K for a candidate (0 for the exact sum, -1 at the farthest one);
anything that is not a number in the candidate range scores -1.5. Pairs are two distinct candidates drawn
uniformly (never two equally good ones); the chosen one has the higher oracle reward. Training labels are flipped with probability
``flip_rate`` (recorded in the ``flipped`` column); validation and test labels are clean, so reward
accuracy on them measures how well the true preference was learned despite the noise.

``train_min_offset`` (default 0: every candidate) limits the coverage of the offline training pairs: with m > 0 they
are drawn only from the candidates a+b+d with |d| >= m (m = 1: the exact sum, the best response, never appears in a
training pair). The prompts, SFT targets and flips are the same as with m = 0 (the restricted pairs come from a
second random stream), and validation/test pairs keep every candidate. It is not in conf/task/synthetic_preference.yaml
(adding a key there would change every synthetic run's SFT cache key); set it with ``+task.train_min_offset=1``.

The SFT warm start fits a uniformly drawn candidate per prompt, so the reference is close to uniform over
the 2K+1 candidates. For that reference the KL-regularized optimum pi*(y) ~ pi_ref(y) exp(r/beta) is known
in closed form: :meth:`optimum_reward` gives its expected oracle reward, and the reward-maximizing
policy (always the exact sum) gets 0.
"""

from __future__ import annotations

import math
import random

from datasets import Dataset, DatasetDict

from workbench.errors import ConfigError
from workbench.tasks.base import NUMBER, Task, check_positive_sizes, normalize_number

OFF_CANDIDATE_REWARD = -1.5


class SyntheticPreferenceTask(Task):
    name = "synthetic_preference"

    def __init__(self, max_value: int = 29, spread: int = 3, flip_rate: float = 0.0, train_size: int = 4000,
                 val_size: int = 200, test_size: int = 200, seed: int = 1234, train_min_offset: int = 0, **_unused):
        for field, value in (("max_value", max_value), ("spread", spread), ("train_size", train_size),
                             ("val_size", val_size), ("test_size", test_size), ("train_min_offset", train_min_offset)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"task.{field}", f"must be a whole number, got {value!r}", f"set task.{field} to an integer")
        if spread < 1:
            raise ConfigError("task.spread", f"must be >= 1 (candidates a+b-K..a+b+K), got {spread}", "set task.spread=3")
        if max_value < 1:
            raise ConfigError("task.max_value", f"must be >= 1, got {max_value}", "set task.max_value=29")
        if isinstance(flip_rate, bool) or not isinstance(flip_rate, (int, float)) or not 0 <= flip_rate < 0.5:
            raise ConfigError("task.flip_rate", f"must be in [0, 0.5), got {flip_rate!r}", "set task.flip_rate=0.2 for 20 % flipped labels")
        if not 0 <= train_min_offset <= spread - 1:
            raise ConfigError("task.train_min_offset", f"must be in [0, spread - 1 = {spread - 1}] (a pair needs two candidates "
                              f"of different quality with |d| >= it), got {train_min_offset}", "set task.train_min_offset=1 (no exact sum in training pairs)")
        check_positive_sizes(train_size=train_size, val_size=val_size, test_size=test_size)
        distinct = (max_value + 1) ** 2
        if val_size + test_size > 0.5 * distinct:
            raise ConfigError("task.max_value", f"{val_size + test_size} held-out prompts from {distinct} distinct sums",
                              "raise task.max_value or lower task.val_size/test_size")
        self.spread, self.flip_rate = spread, float(flip_rate)
        self.train_offsets = [d for d in range(-spread, spread + 1) if abs(d) >= train_min_offset]
        self._coverage_rng = random.Random(f"{seed}/train_min_offset") if train_min_offset else None
        rng = random.Random(seed)
        held_out: set[str] = set()
        splits = {}
        for split, size in (("test", test_size), ("validation", val_size), ("train", train_size)):
            rows = []
            while len(rows) < size:
                a, b = rng.randint(0, max_value), rng.randint(0, max_value)
                prompt = f"{a}+{b}="
                if split != "train":
                    if prompt in held_out:
                        continue
                    held_out.add(prompt)
                elif prompt in held_out:
                    continue
                rows.append(self._row(prompt, a + b, rng, flip=split == "train"))
            splits[split] = Dataset.from_list(rows)
        self.splits = DatasetDict(train=splits["train"], validation=splits["validation"], test=splits["test"])

    def _row(self, prompt: str, answer: int, rng: random.Random, flip: bool) -> dict:
        d1, d2 = self._pair_offsets(range(-self.spread, self.spread + 1), rng)
        if flip and self._coverage_rng is not None:  # a training pair of restricted coverage; rng's stream is unchanged
            d1, d2 = self._pair_offsets(self.train_offsets, self._coverage_rng)
        y1, y2 = str(answer + d1), str(answer + d2)
        r1, r2 = -abs(d1) / self.spread, -abs(d2) / self.spread
        chosen, rejected, rc, rr = (y1, y2, r1, r2) if r1 > r2 else (y2, y1, r2, r1)
        flipped = flip and rng.random() < self.flip_rate
        if flipped:
            chosen, rejected, rc, rr = rejected, chosen, rr, rc
        target = str(answer + rng.randint(-self.spread, self.spread))
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "chosen_reward": round(rc, 6),
                "rejected_reward": round(rr, 6), "flipped": flipped, "target": target, "answer": str(answer)}

    @staticmethod
    def _pair_offsets(offsets, rng: random.Random) -> tuple[int, int]:
        d1, d2 = rng.sample(offsets, 2)
        while abs(d1) == abs(d2):  # +d and -d are equally good: the oracle has no preference, so no pair
            d1, d2 = rng.sample(offsets, 2)
        return d1, d2

    # ---- the oracle ----------------------------------------------------------------------------------
    def extract_answer(self, completion: str) -> str | None:
        match = NUMBER.match(completion.strip())
        return match.group(0) if match else None

    def oracle_reward(self, completion: str, answer: str) -> float:
        predicted = normalize_number(self.extract_answer(completion))
        if predicted is None or "." in predicted:
            return OFF_CANDIDATE_REWARD
        distance = abs(int(predicted) - int(answer))
        return -distance / self.spread if distance <= self.spread else OFF_CANDIDATE_REWARD

    def optimum_reward(self, beta: float) -> float:
        """E[r] under pi*(y) ~ exp(r(y)/beta) on the 2K+1 candidates (uniform reference)."""
        rewards = [-abs(d) / self.spread for d in range(-self.spread, self.spread + 1)]
        weights = [math.exp(r / beta) for r in rewards]
        return sum(w * r for w, r in zip(weights, rewards)) / sum(weights)
