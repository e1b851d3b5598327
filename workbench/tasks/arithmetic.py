"""Synthetic arithmetic: 'a+b-c=' -> value. Seeded, with difficulty knobs and disjoint splits."""

from __future__ import annotations

import random

from datasets import Dataset, DatasetDict
from omegaconf import ListConfig

from workbench.errors import ConfigError
from workbench.tasks.base import NUMBER, Task, check_operators, check_positive_sizes

OPERATORS = ("+", "-", "*")


class ArithmeticTask(Task):
    name = "arithmetic"

    def __init__(
        self,
        num_operands: int | list[int] = 2,
        min_value: int = 0,
        max_value: int | list[int] = 99,
        operators: tuple[str, ...] = ("+",),
        train_size: int = 20000,
        val_size: int = 200,
        test_size: int = 500,
        seed: int = 1234,
        **_unused,
    ):
        # Mixed difficulty: num_operands and/or max_value given as lists (of one length; a whole number is repeated)
        # define levels, level i drawing num_operands[i] operands from min_value..max_value[i]. Each problem draws its
        # level uniformly and every row carries a 'difficulty' column ('2ops_max99', ...) that evaluation reports
        # accuracy by. With whole numbers there is one level, no column, and the draws of the task without levels.
        lists = {field: (list(v) if isinstance(v, (list, tuple, ListConfig)) else None)
                 for field, v in (("num_operands", num_operands), ("max_value", max_value))}
        mixed = any(v is not None for v in lists.values())
        size = max((len(v) for v in lists.values() if v is not None), default=1)
        for field, values in lists.items():
            if values is not None and len(values) != size or size == 0:
                raise ConfigError(f"task.{field}", f"levels need lists of one length, got num_operands={num_operands!r}, "
                                  f"max_value={max_value!r}", "e.g. task.num_operands=[4,2] task.max_value=[9,99]")
        levels = list(zip(lists["num_operands"] or [num_operands] * size, lists["max_value"] or [max_value] * size))
        for field, value in (*(("num_operands", n) for n, _ in levels), *(("max_value", m) for _, m in levels),
                             ("min_value", min_value), ("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"task.{field}", f"must be a whole number, got {value!r}", f"set task.{field} to an integer")
        if any(n < 2 for n, _ in levels):
            raise ConfigError("task.num_operands", f"must be >= 2, got {num_operands}", "set task.num_operands=2 or more")
        if len(set(levels)) != len(levels):
            raise ConfigError("task.num_operands", f"levels repeat: {levels}", "give each level its own num_operands / max_value")
        if min_value < 0 or any(m <= min_value for _, m in levels):
            raise ConfigError("task.max_value", f"need 0 <= min_value < max_value, got {min_value}..{max_value}", "widen the range")
        check_operators(operators, OPERATORS)
        check_positive_sizes(train_size=train_size, val_size=val_size, test_size=test_size)
        total = train_size + val_size + test_size
        for n, m in levels:  # each level gets about total / len(levels) of the problems
            space = (m - min_value + 1) ** n * len(operators) ** (n - 1)
            if total / len(levels) > 0.8 * space:
                raise ConfigError("task.train_size", f"{total / len(levels):.0f} problems with {n} operands of {min_value}..{m} "
                                  f"requested from only {space} distinct ones", "raise task.max_value or lower the sizes")
        rng = random.Random(seed)
        seen: set[str] = set()
        splits = {}
        # held-out splits first, so the train split never contains a held-out expression
        for split, size in (("test", test_size), ("validation", val_size), ("train", train_size)):
            rows = []
            while len(rows) < size:
                n, top = rng.choice(levels) if mixed else levels[0]  # no level draw without levels: the draws stay as they were
                operands = [rng.randint(min_value, top) for _ in range(n)]
                ops = [rng.choice(operators) for _ in range(n - 1)]
                expr = str(operands[0]) + "".join(f"{o}{v}" for o, v in zip(ops, operands[1:]))
                if expr in seen:
                    continue
                seen.add(expr)
                value = eval(expr, {"__builtins__": {}})  # digits and + - * only, built above
                row = {"prompt": f"{expr}=", "target": str(value), "answer": str(value)}
                if mixed:
                    row["difficulty"] = f"{n}ops_max{top}"
                rows.append(row)
            splits[split] = Dataset.from_list(rows)
        self.splits = DatasetDict(train=splits["train"], validation=splits["validation"], test=splits["test"])

    def extract_answer(self, completion: str) -> str | None:
        match = NUMBER.match(completion.strip())
        return match.group(0) if match else None
