"""Synthetic arithmetic: 'a+b-c=' -> value. Seeded, with difficulty knobs and disjoint splits."""

from __future__ import annotations

import random

from datasets import Dataset, DatasetDict

from workbench.errors import ConfigError
from workbench.tasks.base import NUMBER, Task, check_operators, check_positive_sizes

OPERATORS = ("+", "-", "*")


class ArithmeticTask(Task):
    name = "arithmetic"

    def __init__(
        self,
        num_operands: int = 2,
        min_value: int = 0,
        max_value: int = 99,
        operators: tuple[str, ...] = ("+",),
        train_size: int = 20000,
        val_size: int = 200,
        test_size: int = 500,
        seed: int = 1234,
        **_unused,
    ):
        for field, value in (("num_operands", num_operands), ("min_value", min_value), ("max_value", max_value),
                             ("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"task.{field}", f"must be a whole number, got {value!r}", f"set task.{field} to an integer")
        if num_operands < 2:
            raise ConfigError("task.num_operands", f"must be >= 2, got {num_operands}", "set task.num_operands=2 or more")
        if min_value < 0 or max_value <= min_value:
            raise ConfigError("task.max_value", f"need 0 <= min_value < max_value, got {min_value}..{max_value}", "widen the range")
        check_operators(operators, OPERATORS)
        check_positive_sizes(train_size=train_size, val_size=val_size, test_size=test_size)
        space = (max_value - min_value + 1) ** num_operands * len(operators) ** (num_operands - 1)
        total = train_size + val_size + test_size
        if total > 0.8 * space:
            raise ConfigError("task.train_size", f"{total} problems requested from only {space} distinct ones", "raise task.max_value or lower the sizes")
        rng = random.Random(seed)
        seen: set[str] = set()
        splits = {}
        # held-out splits first, so the train split never contains a held-out expression
        for split, size in (("test", test_size), ("validation", val_size), ("train", train_size)):
            rows = []
            while len(rows) < size:
                operands = [rng.randint(min_value, max_value) for _ in range(num_operands)]
                ops = [rng.choice(operators) for _ in range(num_operands - 1)]
                expr = str(operands[0]) + "".join(f"{o}{v}" for o, v in zip(ops, operands[1:]))
                if expr in seen:
                    continue
                seen.add(expr)
                value = eval(expr, {"__builtins__": {}})  # digits and + - * only, built above
                rows.append({"prompt": f"{expr}=", "target": str(value), "answer": str(value)})
            splits[split] = Dataset.from_list(rows)
        self.splits = DatasetDict(train=splits["train"], validation=splits["validation"], test=splits["test"])

    def extract_answer(self, completion: str) -> str | None:
        match = NUMBER.match(completion.strip())
        return match.group(0) if match else None
