"""Anthropic HH-RLHF preference pairs (MIT, data/hh_rlhf): helpful-base and harmless-base test files.

Each record holds two transcripts, ``chosen`` and ``rejected``: the same dialogue ("\\n\\nHuman: ..." and
"\\n\\nAssistant: ..." turns) that differs only in its final assistant reply. The shared dialogue up to and
including the last "\\n\\nAssistant:" is the prompt; the two final replies are the completions. Rows come in
TRL's two layouts (``format``):

* ``standard``: ``prompt`` is the transcript text ending with "\\n\\nAssistant:", ``chosen``/``rejected`` the
  replies with their leading space, so ``prompt + chosen`` is exactly the upstream ``chosen`` transcript;
* ``conversational``: ``prompt`` is a list of ``{role, content}`` messages (user/assistant), ``chosen`` and
  ``rejected`` are ``[{role: assistant, content}]`` with the reply without its leading space. Models with a
  chat template render it through the template; models without one in the HH layout again
  (``Policy.format_messages``).

Records whose two transcripts do not share the dialogue before the final reply (a reply that itself
contains further turns), with an empty or a Human-turn reply, or with identical replies are dropped with a
counted warning. Only the upstream test files are available, so the splits are made here: one seeded
shuffle of the records grouped by their opening human question (dialogues branching from one question
never sit in two splits), test first, then validation, then (up to ``train_size`` of) the rest.
``target`` (the SFT warm start's completion) is the chosen reply. ``max_prompt_chars`` drops pairs with a
longer prompt before splitting, so that tiny models (512 positions) see whole dialogues.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from pathlib import Path

from datasets import Dataset, DatasetDict

from workbench.errors import ConfigError
from workbench.tasks.base import Task, check_held_out_sizes

log = logging.getLogger(__name__)

FILES = {"helpful": "helpful-base_test.jsonl.gz", "harmless": "harmless-base_test.jsonl.gz"}
SUBSETS = ("helpful", "harmless", "both")
FORMATS = ("standard", "conversational")
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
TURN = re.compile(r"\n\n(Human|Assistant): ")
ROLES = {"Human": "user", "Assistant": "assistant"}


class MalformedRecord(ValueError):
    """A record that does not split into (shared dialogue, chosen reply, rejected reply); the message is the reason."""


def split_record(chosen, rejected) -> tuple[str, str, str]:
    """Two HH transcripts -> (prompt ending with '\\n\\nAssistant:', chosen reply, rejected reply).

    The replies keep their leading space, so ``prompt + reply`` is the transcript, character for character."""
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise MalformedRecord("chosen/rejected missing or not text")
    if not chosen.startswith(HUMAN) or not rejected.startswith(HUMAN):
        raise MalformedRecord("does not start with a Human turn")
    cut_chosen, cut_rejected = chosen.rfind(ASSISTANT), rejected.rfind(ASSISTANT)
    if cut_chosen < 0 or cut_rejected < 0:
        raise MalformedRecord("no assistant reply")
    if chosen[:cut_chosen] != rejected[:cut_rejected]:
        raise MalformedRecord("dialogues differ before the final reply")
    prompt = chosen[:cut_chosen + len(ASSISTANT)]
    reply_chosen, reply_rejected = chosen[cut_chosen + len(ASSISTANT):], rejected[cut_rejected + len(ASSISTANT):]
    if not reply_chosen.strip() or not reply_rejected.strip():
        raise MalformedRecord("empty final reply")
    if HUMAN in reply_chosen or HUMAN in reply_rejected:
        raise MalformedRecord("final reply contains a Human turn")
    if reply_chosen == reply_rejected:
        raise MalformedRecord("identical final replies")
    return prompt, reply_chosen, reply_rejected


def prompt_messages(prompt: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:' -> [user a, assistant b, user c].

    Contents are kept exactly, so the HH layout of ``Policy.format_messages`` gives ``prompt`` back."""
    parts = TURN.split(prompt[:-len(ASSISTANT)])
    if parts[0] != "" or len(parts) < 3:
        raise MalformedRecord("dialogue does not parse into Human/Assistant turns")
    messages = [{"role": ROLES[role], "content": content} for role, content in zip(parts[1::2], parts[2::2])]
    if messages[0]["role"] != "user" or hh_layout(messages) != prompt:
        raise MalformedRecord("dialogue does not parse into Human/Assistant turns")
    return messages


def hh_layout(messages: list[dict]) -> str:
    """Messages back in the HH transcript layout, ending with the generation prompt '\\n\\nAssistant:'."""
    names = {v: k for k, v in ROLES.items()}
    return "".join(f"\n\n{names.get(m['role'], m['role'])}: {m['content']}" for m in messages) + ASSISTANT


def reply_message(reply: str) -> list[dict]:
    return [{"role": "assistant", "content": reply[1:] if reply.startswith(" ") else reply}]


def opening_question(prompt: str) -> str:
    return prompt[len(HUMAN):].split(ASSISTANT, 1)[0].strip()


def transcript(prompt, completion) -> str:
    """One side of a pair as plain text, prompt + reply, whichever layout the row is in (a message list is
    rendered in the HH layout, its reply after a space): exactly the upstream transcript for HH rows."""
    if not isinstance(prompt, str):
        prompt = hh_layout(list(prompt))
    if not isinstance(completion, str):
        completion = " " + "".join(m["content"] for m in completion)
    return prompt + completion


class HHRLHFTask(Task):
    name = "hh_rlhf"

    def __init__(self, data_dir: str, subset: str = "helpful", format: str = "standard", val_size: int = 200,
                 test_size: int = 200, train_size: int | None = None, max_prompt_chars: int | None = None,
                 seed: int = 1234, **_unused):
        if subset not in SUBSETS:
            raise ConfigError("task.subset", f"unknown '{subset}'", f"use one of {list(SUBSETS)}")
        if format not in FORMATS:
            raise ConfigError("task.format", f"unknown '{format}'",
                              f"use one of {list(FORMATS)} (TRL's standard text or conversational messages)")
        if max_prompt_chars is not None and (isinstance(max_prompt_chars, bool) or not isinstance(max_prompt_chars, int)
                                             or max_prompt_chars < 1):
            raise ConfigError("task.max_prompt_chars", f"must be a positive count or null (no limit), got {max_prompt_chars!r}",
                              "e.g. task.max_prompt_chars=600 for models with 512 positions")
        self.subset, self.format = subset, format
        self.dropped: Counter = Counter()  # reason -> records dropped as malformed
        pairs: list[dict] = []
        for name in (("helpful", "harmless") if subset == "both" else (subset,)):
            pairs.extend(self._read(Path(data_dir) / FILES[name], name))
        if max_prompt_chars is not None:
            kept = [p for p in pairs if len(p["prompt"]) <= max_prompt_chars]
            log.info("hh_rlhf: %d of %d pairs have a prompt of at most %d characters", len(kept), len(pairs), max_prompt_chars)
            pairs = kept
        check_held_out_sizes(val_size, test_size, train_size, len(pairs),
                             fix_hint=" or raise task.max_prompt_chars" if max_prompt_chars is not None else "")
        splits = grouped_splits(pairs, val_size, test_size, train_size, seed)
        self.splits = DatasetDict({k: Dataset.from_list([self._row(p) for p in v]) for k, v in splits.items()})

    def _read(self, path: Path, subset: str) -> list[dict]:
        import datasets

        if not path.is_file():
            raise ConfigError("task.data_dir", f"data file '{path}' does not exist",
                              "point task.data_dir at the folder with the HH-RLHF files (data/hh_rlhf) or restore it from git")
        bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # a bar per file read adds nothing to a run's output
        try:
            records = datasets.load_dataset("json", data_files=str(path), split="train")
        except Exception as e:  # noqa: BLE001 - datasets raises several types for unreadable JSON
            raise ConfigError("task.data_dir", f"cannot read '{path}' as JSON lines ({type(e).__name__})",
                              "restore the file from git (gzipped JSON lines with 'chosen' and 'rejected')") from None
        finally:
            if bars:
                datasets.enable_progress_bars()
        for key in ("chosen", "rejected"):
            if key not in records.column_names:
                raise ConfigError("task.data_dir", f"'{path}' has no '{key}' field", "every record needs 'chosen' and 'rejected'")
        pairs, dropped = [], Counter()
        for record in records:
            try:
                prompt, chosen, rejected = split_record(record["chosen"], record["rejected"])
                messages = prompt_messages(prompt)
            except MalformedRecord as e:
                dropped[str(e)] += 1
                continue
            pairs.append({"prompt": prompt, "messages": messages, "chosen": chosen, "rejected": rejected, "subset": subset})
        if dropped:
            log.warning("hh_rlhf: dropped %d of %d records of %s: %s", sum(dropped.values()), len(records), path.name,
                        ", ".join(f"{n} {why}" for why, n in dropped.most_common()))
        if not pairs:
            raise ConfigError("task.data_dir", f"'{path}' has no usable record", "restore the file from git")
        self.dropped.update(dropped)
        return pairs

    def _row(self, pair: dict) -> dict:
        row = {"prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"]}
        if self.format == "conversational":
            row = {"prompt": pair["messages"], "chosen": reply_message(pair["chosen"]),
                   "rejected": reply_message(pair["rejected"])}
        target = pair["chosen"] if self.format == "standard" else row["chosen"][0]["content"]
        return {**row, "target": target, "answer": pair["chosen"].strip(), "subset": pair["subset"]}

    # ---- what the shared pieces read --------------------------------------------------------------------
    def corpus(self):
        """Transcripts of the training pairs (both replies), for a tiny model's tokenizer."""
        for row in self.splits["train"]:
            yield transcript(row["prompt"], row["chosen"])
            yield transcript(row["prompt"], row["rejected"])

    def extract_answer(self, completion: str) -> str | None:
        return completion.strip()

    def verify(self, completion: str, answer: str) -> bool:
        """Greedy 'accuracy' has no verifier on HH: this is an exact match with the preferred reply
        (whitespace-normalized), a strict sanity number that stays near 0; rank pairs for real signal."""
        return " ".join(completion.split()) == " ".join(answer.split())


def grouped_splits(pairs: list[dict], val_size: int, test_size: int, train_size: int | None, seed: int) -> dict:
    """Seeded shuffle of the pairs grouped by opening question; test, then validation, then the rest.

    A group that straddles a split boundary gives the held-out split what it still needs and drops the
    remainder, so no opening question appears in two splits."""
    groups: dict[str, list[dict]] = {}
    for pair in pairs:
        groups.setdefault(opening_question(pair["prompt"]), []).append(pair)
    order = list(groups)
    random.Random(seed).shuffle(order)
    out: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for key in order:
        group = groups[key]
        for split, size in (("test", test_size), ("validation", val_size)):
            if len(out[split]) < size:
                out[split].extend(group[:size - len(out[split])])
                break
        else:
            out["train"].extend(group)
    if train_size is not None:
        out["train"] = out["train"][:train_size]
    if not out["train"] or len(out["test"]) < test_size or len(out["validation"]) < val_size:
        raise ConfigError("task.test_size", f"{len(pairs)} pairs cannot fill val_size={val_size} and test_size={test_size} "
                          "and leave pairs to train on", "lower task.val_size or task.test_size")
    return out
