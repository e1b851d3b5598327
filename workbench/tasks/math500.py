"""MATH-500 (MIT, data/math500: OpenAI PRM800K's held-out subset of MATH): problem -> final answer,
checked for mathematical equivalence with math-verify.

MATH-500 is a test set only. To train on it at all, one seeded shuffle (optionally restricted to
some difficulty ``levels``) is cut into test, then validation, then train; defaults 200 / 50 / the
remaining 250. Accuracy on this 200-problem test split is not comparable with published MATH-500
numbers, which use all 500 problems as the test set.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict

from workbench.errors import ConfigError
from workbench.rewards.verifiable import math_equivalent
from workbench.tasks.base import Task, read_jsonl

DEFAULT_TEMPLATE = "Problem: {problem}\nPut the final answer in \\boxed{{}}.\nSolution:"


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


class MATH500Task(Task):
    name = "math500"

    def __init__(self, data_dir: str, train_size: int | None = None, val_size: int = 50, test_size: int = 200,
                 levels: list[int] | None = None, prompt_template: str = DEFAULT_TEMPLATE, seed: int = 1234, **_unused):
        records = read_jsonl(Path(data_dir) / "test.jsonl", ("problem", "solution", "answer", "level"), "task.data_dir")
        if levels is not None:
            levels = [levels] if isinstance(levels, int) else list(levels)
            if not levels or any(isinstance(v, bool) or v not in (1, 2, 3, 4, 5) for v in levels):
                raise ConfigError("task.levels", f"must be a list of MATH levels 1..5 or null, got {levels!r}", "e.g. task.levels=[1,2]")
            records = [r for r in records if int(r["level"]) in levels]
        for field, size in (("val_size", val_size), ("test_size", test_size)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ConfigError(f"task.{field}", f"must be a positive count, got {size!r}", f"set task.{field} to e.g. 50")
        if train_size is not None and (isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1):
            raise ConfigError("task.train_size", f"must be a positive count or null (the rest), got {train_size!r}",
                              "set task.train_size=null to train on every problem not held out")
        if val_size + test_size >= len(records):
            raise ConfigError("task.test_size", f"val_size + test_size = {val_size + test_size} leaves no training problem "
                              f"out of {len(records)}", "lower task.val_size or task.test_size (or widen task.levels)")
        if "{problem}" not in prompt_template:
            raise ConfigError("task.prompt_template", "must contain '{problem}'", "e.g. 'Problem: {problem}\\nSolution:'")

        rows = [{
            "prompt": prompt_template.format(problem=r["problem"]),
            "target": " " + r["solution"].strip(),
            "answer": r["answer"],
        } for r in records]
        shuffled = Dataset.from_list(rows).shuffle(seed=seed)
        test = shuffled.select(range(test_size))
        validation = shuffled.select(range(test_size, test_size + val_size))
        train = shuffled.select(range(test_size + val_size, len(shuffled)))
        if train_size is not None:
            train = train.select(range(min(train_size, len(train))))
        self.splits = DatasetDict(train=train, validation=validation, test=test)

    def extract_answer(self, completion: str) -> str | None:
        return last_boxed(completion)

    def verify(self, completion: str, answer: str) -> bool:
        return math_equivalent(completion, answer)
