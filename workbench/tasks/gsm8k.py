"""GSM8K grade-school math (MIT, data/gsm8k): answer after '####', exact match on the number."""

from __future__ import annotations

import re
from pathlib import Path

from datasets import Dataset, DatasetDict

from workbench.errors import ConfigError
from workbench.tasks.base import NUMBER, Task, read_jsonl

CALCULATOR = re.compile(r"<<[^>]*>>")
FINAL = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


def final_answer(solution: str) -> str | None:
    match = FINAL.search(solution)
    return match.group(1) if match else None


class GSM8KTask(Task):
    name = "gsm8k"

    def __init__(self, data_dir: str, val_size: int = 200, train_size: int | None = None, test_size: int | None = None,
                 prompt_template: str = "Question: {question}\nAnswer:", seed: int = 1234, **_unused):
        data_dir = Path(data_dir)
        train = read_jsonl(data_dir / "train.jsonl", ("question", "answer"), "task.data_dir")
        test = read_jsonl(data_dir / "test.jsonl", ("question", "answer"), "task.data_dir")
        for field, size in (("train_size", train_size), ("test_size", test_size)):
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
                raise ConfigError(f"task.{field}", f"must be a positive count or null (all), got {size!r}",
                                  f"set task.{field}=null to use every record, or a positive count")
        if isinstance(val_size, bool) or not isinstance(val_size, int) or not 0 < val_size < len(train):
            raise ConfigError("task.val_size", f"must be in 1..{len(train) - 1}, got {val_size!r}", "pick a smaller validation split")

        def rows(records):
            out = []
            for r in records:
                answer = final_answer(r["answer"])
                if answer is None:
                    continue  # no '####' line: unusable for exact match
                solution = CALCULATOR.sub("", r["answer"]).strip()
                out.append({"prompt": prompt_template.format(question=r["question"]), "target": " " + solution, "answer": answer})
            return out

        usable = rows(train)
        if len(usable) <= val_size:
            raise ConfigError("task.val_size", f"{data_dir / 'train.jsonl'} has only {len(usable)} records with a '####' answer, "
                              f"got val_size={val_size}", "pick a smaller validation split")
        full = Dataset.from_list(usable).shuffle(seed=seed)
        held = full.select(range(val_size))
        rest = full.select(range(val_size, len(full)))
        if train_size is not None:
            rest = rest.select(range(min(train_size, len(rest))))
        test_rows = rows(test)
        if not test_rows:
            raise ConfigError("task.data_dir", f"{data_dir / 'test.jsonl'} has no record with a '####' answer",
                              "every answer needs a final line '#### <number>'")
        test_ds = Dataset.from_list(test_rows)
        if test_size is not None:
            test_ds = test_ds.select(range(min(test_size, len(test_ds))))
        self.splits = DatasetDict(train=rest, validation=held, test=test_ds)

    def extract_answer(self, completion: str) -> str | None:
        answer = final_answer(completion)
        if answer is not None:
            return answer
        numbers = NUMBER.findall(completion)
        return numbers[-1] if numbers else None
