"""MATH-500 (MIT, data/math500: OpenAI PRM800K's held-out subset of MATH): problem -> final answer,
checked for mathematical equivalence with math-verify.

MATH-500 is a test set only. To train on it at all, one seeded shuffle (optionally restricted to
some difficulty ``levels``) is cut into test, then validation, then train; defaults 200 / 50 / the
remaining 250. Accuracy on this 200-problem test split is not comparable with published MATH-500
numbers, which use all 500 problems as the test set.
"""

from __future__ import annotations

from pathlib import Path


from workbench.errors import ConfigError
from workbench.rewards.verifiable import math_equivalent
from workbench.tasks.base import Task, check_held_out_sizes, held_out_splits, read_jsonl

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
        check_held_out_sizes(val_size, test_size, train_size, len(records), " (or widen task.levels)")
        if "{problem}" not in prompt_template:
            raise ConfigError("task.prompt_template", "must contain '{problem}'", "e.g. 'Problem: {problem}\\nSolution:'")

        rows = [{
            "prompt": prompt_template.format(problem=r["problem"]),
            "target": " " + r["solution"].strip(),
            "answer": r["answer"],
        } for r in records]
        self.splits = held_out_splits(rows, val_size, test_size, train_size, seed)

    def extract_answer(self, completion: str) -> str | None:
        return last_boxed(completion)

    def verify(self, completion: str, answer: str) -> bool:
        return math_equivalent(completion, answer)
