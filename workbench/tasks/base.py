"""A task: `datasets` splits with prompt/target/answer columns, and a verifier of completions."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Iterator

from datasets import Dataset, DatasetDict

from workbench.errors import ConfigError

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
PLAIN_DECIMAL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def normalize_number(text: str | None) -> str | None:
    """'1,234.50' -> '1234.5', '3.0' -> '3'; returns None when ``text`` is not a plain decimal number.

    Exact (decimal, not float) so large integers never compare equal to their neighbours.
    """
    if text is None:
        return None
    text = text.strip().replace(",", "").rstrip(".")
    if not PLAIN_DECIMAL.fullmatch(text):
        return None
    value = Decimal(text)
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


class Task:
    """Columns of every split: ``prompt`` (str), ``target`` (SFT completion), ``answer`` (for the verifier)."""

    name: str = "task"
    splits: DatasetDict

    def extract_answer(self, completion: str) -> str | None:
        raise NotImplementedError

    def verify(self, completion: str, answer: str) -> bool:
        predicted = normalize_number(self.extract_answer(completion))
        return predicted is not None and predicted == normalize_number(answer)

    def corpus(self) -> Iterator[str]:
        """Text a task-specific tokenizer is trained on."""
        for row in self.splits["train"]:
            yield row["prompt"] + row["target"]

    def difficulty_levels(self) -> list[str]:
        """The values of the 'difficulty' column (sorted; empty when the task has none): evaluation logs accuracy per level.
        Read once: every evaluation batch asks, and the splits do not change."""
        if getattr(self, "_difficulty_levels", None) is None:
            levels: set[str] = set()
            for split in self.splits.values():
                if "difficulty" in split.column_names:
                    levels.update(str(level) for level in split["difficulty"])
            self._difficulty_levels = sorted(levels)
        return self._difficulty_levels

    def split(self, name: str) -> Dataset:
        if name not in self.splits:
            raise ConfigError("split", f"task '{self.name}' has no split '{name}'", f"use one of {list(self.splits)}")
        return self.splits[name]


def check_operators(operators, allowed: tuple[str, ...]) -> None:
    bad = [op for op in operators if op not in allowed]
    if bad or not operators:
        raise ConfigError("task.operators", f"unsupported {bad or 'empty list'}", f"choose from {list(allowed)}")


def check_positive_sizes(**sizes: int) -> None:
    """Synthetic tasks: every split size a positive count."""
    for field, size in sizes.items():
        if size < 1:
            raise ConfigError(f"task.{field}", f"must be >= 1, got {size}", f"set task.{field} to a positive count")


def check_held_out_sizes(val_size, test_size, train_size, available: int, fix_hint: str = "") -> None:
    """File-backed tasks: val/test positive counts, train a positive count or null, and something left to train on."""
    for field, size in (("val_size", val_size), ("test_size", test_size)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"task.{field}", f"must be a positive count, got {size!r}", f"set task.{field} to e.g. 100")
    if train_size is not None and (isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1):
        raise ConfigError("task.train_size", f"must be a positive count or null (the rest), got {train_size!r}",
                          "set task.train_size=null to train on every problem not held out")
    if val_size + test_size >= available:
        raise ConfigError("task.test_size", f"val_size + test_size = {val_size + test_size} leaves no training problem "
                          f"out of {available}", "lower task.val_size or task.test_size" + fix_hint)


def held_out_splits(rows: list[dict], val_size: int, test_size: int, train_size: int | None, seed: int) -> DatasetDict:
    """One seeded shuffle: test first, then validation, then (up to train_size of) the rest."""
    shuffled = Dataset.from_list(rows).shuffle(seed=seed)
    test = shuffled.select(range(test_size))
    validation = shuffled.select(range(test_size, test_size + val_size))
    train = shuffled.select(range(test_size + val_size, len(shuffled)))
    if train_size is not None:
        train = train.select(range(min(train_size, len(train))))
    return DatasetDict(train=train, validation=validation, test=test)


def read_jsonl(path: str | Path, required: tuple[str, ...], field: str) -> list[dict]:
    """Read a JSONL file, failing on the first bad line with its number."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(field, f"data file '{path}' does not exist", "check the path or restore the file from git")
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(field, f"{path} line {lineno}: malformed JSON ({e.msg})", "fix or remove that line") from None
            missing = [k for k in required if k not in row]
            if missing:
                raise ConfigError(field, f"{path} line {lineno}: missing key(s) {missing}", f"every line needs {list(required)}")
            rows.append(row)
    if not rows:
        raise ConfigError(field, f"{path} has no records", "point it at a non-empty JSONL file")
    return rows
