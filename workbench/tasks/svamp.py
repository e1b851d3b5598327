"""SVAMP arithmetic word problems (MIT, data/svamp): Body + Question -> a number, exact match.

The file is SVAMP's 1,000-problem challenge set (one JSON array, no official split), so train /
validation / test are cut from one seeded shuffle: test first, then validation, then train.
"""

from __future__ import annotations

import json
import re
from pathlib import Path


from workbench.errors import ConfigError
from workbench.tasks.base import Task, check_held_out_sizes, held_out_splits, normalize_number
from workbench.tasks.gsm8k import GSM8KTask

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
        check_held_out_sizes(val_size, test_size, train_size, len(records))
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
        self.splits = held_out_splits(rows, val_size, test_size, train_size, seed)

    extract_answer = GSM8KTask.extract_answer  # the number after '####', else the last number
