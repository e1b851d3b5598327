"""SVAMP arithmetic word problems (MIT, data/svamp): Body + Question -> a number, exact match.

The file is SVAMP's 1,000-problem challenge set (one JSON array, no official split), so train /
validation / test are cut from one seeded shuffle: test first, then validation, then train.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from datasets import Dataset, DatasetDict

from workbench.errors import ConfigError
from workbench.tasks.base import NUMBER, Task, normalize_number
from workbench.tasks.gsm8k import final_answer

REQUIRED = ("Body", "Question", "Equation", "Answer")
WHOLE_FLOAT = re.compile(r"(\d+)\.0\b")  # SVAMP writes '76.0'; the SFT target reads better as '76'


def read_svamp(path: Path) -> list[dict]:
    if not path.is_file():
        raise ConfigError("task.data_dir", f"data file '{path}' does not exist", "check the path or restore the file from git")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError("task.data_dir", f"{path}: malformed JSON ({e.msg}, line {e.lineno})", "restore the file") from None
    if not isinstance(records, list) or not records:
        raise ConfigError("task.data_dir", f"{path} must be a non-empty JSON array", "restore the file")
    for i, r in enumerate(records):
        missing = [k for k in REQUIRED if not isinstance(r, dict) or k not in r]
        if missing:
            raise ConfigError("task.data_dir", f"{path} record {i}: missing key(s) {missing}", f"every record needs {list(REQUIRED)}")
    return records


def question_text(body: str, question: str) -> str:
    """Body + ' ' + Question (SOURCE.md); a body without final punctuation gets a period so the two
    sentences do not run together ('... on each pack. How much ...')."""
    body = body.strip()
    if body and body[-1] not in ".?!":
        body += "."
    return f"{body} {question.strip()}"


class SVAMPTask(Task):
    name = "svamp"

    def __init__(self, data_dir: str, train_size: int | None = None, val_size: int = 100, test_size: int = 300,
                 prompt_template: str = "Question: {question}\nAnswer:", seed: int = 1234, **_unused):
        records = read_svamp(Path(data_dir) / "SVAMP.json")
        for field, size in (("val_size", val_size), ("test_size", test_size)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ConfigError(f"task.{field}", f"must be a positive count, got {size!r}", f"set task.{field} to e.g. 100")
        if train_size is not None and (isinstance(train_size, bool) or not isinstance(train_size, int) or train_size < 1):
            raise ConfigError("task.train_size", f"must be a positive count or null (the rest), got {train_size!r}",
                              "set task.train_size=null to train on every problem not held out")
        if val_size + test_size >= len(records):
            raise ConfigError("task.test_size", f"val_size + test_size = {val_size + test_size} leaves no training problem "
                              f"out of {len(records)}", "lower task.val_size or task.test_size")
        if "{question}" not in prompt_template:
            raise ConfigError("task.prompt_template", "must contain '{question}'", "e.g. 'Question: {question}\\nAnswer:'")

        rows = []
        for r in records:
            answer = normalize_number(str(r["Answer"]))
            if answer is None:
                raise ConfigError("task.data_dir", f"record {r.get('ID')}: Answer {r['Answer']!r} is not a number", "restore the file")
            equation = WHOLE_FLOAT.sub(r"\1", str(r["Equation"])).strip()
            rows.append({
                "prompt": prompt_template.format(question=question_text(r["Body"], r["Question"])),
                "target": f" {equation} = {answer}\n#### {answer}",
                "answer": answer,
            })
        full = Dataset.from_list(rows).shuffle(seed=seed)
        test = full.select(range(test_size))
        validation = full.select(range(test_size, test_size + val_size))
        train = full.select(range(test_size + val_size, len(full)))
        if train_size is not None:
            train = train.select(range(min(train_size, len(train))))
        self.splits = DatasetDict(train=train, validation=validation, test=test)

    def extract_answer(self, completion: str) -> str | None:
        """The number after '####' (as GSM8K), else the last number in the completion."""
        answer = final_answer(completion)
        if answer is not None:
            return answer
        numbers = NUMBER.findall(completion)
        return numbers[-1] if numbers else None
