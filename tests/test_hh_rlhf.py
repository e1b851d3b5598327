"""HH-RLHF task: parsing records into prompt/chosen/rejected, seeded disjoint splits, both TRL layouts, bad input."""

from __future__ import annotations

import gzip
import json
import logging

import pytest
from omegaconf import OmegaConf

from workbench import ROOT
from workbench.errors import ConfigError
from workbench.methods.preference.module import PairEncoder
from workbench.policy.models import build_tiny
from workbench.tasks import build_task
from workbench.tasks.hh_rlhf import (HHRLHFTask, MalformedRecord, hh_layout, opening_question, prompt_messages,
                                     split_record, transcript)

DATA = ROOT / "data" / "hh_rlhf"

ONE_TURN = {
    "chosen": "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water for about nine minutes.",
    "rejected": "\n\nHuman: How do I boil an egg?\n\nAssistant: I don't know.",
}
MULTI_TURN = {
    "chosen": "\n\nHuman: Hi!\n\nAssistant: Hello, how can I help?\n\nHuman: Name a color.\n\nAssistant: Blue.",
    "rejected": "\n\nHuman: Hi!\n\nAssistant: Hello, how can I help?\n\nHuman: Name a color.\n\nAssistant: No.",
}


def write_records(folder, name: str, records: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / name, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def numbered(n: int, extra: list[dict] | None = None) -> list[dict]:
    """n well-formed records with distinct opening questions (some multi-turn)."""
    out = []
    for i in range(n):
        head = f"\n\nHuman: question {i}?" + ("\n\nAssistant: which one?\n\nHuman: the first" if i % 3 == 0 else "")
        out.append({"chosen": f"{head}\n\nAssistant: good answer {i}", "rejected": f"{head}\n\nAssistant: bad {i}"})
    return out + (extra or [])


# ---- parsing ---------------------------------------------------------------------------------------------
def test_single_turn_record_splits_into_prompt_and_final_replies_exactly():
    prompt, chosen, rejected = split_record(ONE_TURN["chosen"], ONE_TURN["rejected"])
    assert prompt == "\n\nHuman: How do I boil an egg?\n\nAssistant:"
    assert chosen == " Put it in boiling water for about nine minutes."
    assert rejected == " I don't know."
    assert prompt + chosen == ONE_TURN["chosen"] and prompt + rejected == ONE_TURN["rejected"]


def test_multi_turn_record_keeps_earlier_turns_in_the_prompt():
    prompt, chosen, rejected = split_record(MULTI_TURN["chosen"], MULTI_TURN["rejected"])
    assert prompt == "\n\nHuman: Hi!\n\nAssistant: Hello, how can I help?\n\nHuman: Name a color.\n\nAssistant:"
    assert (chosen, rejected) == (" Blue.", " No.")
    messages = prompt_messages(prompt)
    assert messages == [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "Name a color."},
    ]
    assert hh_layout(messages) == prompt
    assert opening_question(prompt) == "Hi!"


def test_replies_may_contain_other_speaker_like_text():
    chosen = "\n\nHuman: Who sings?\n\nAssistant: Some artists:\n\nShankar: sitar\n\nBaaba Maal: voice"
    rejected = "\n\nHuman: Who sings?\n\nAssistant: Nobody."
    prompt, reply, _ = split_record(chosen, rejected)
    assert prompt == "\n\nHuman: Who sings?\n\nAssistant:" and reply == " Some artists:\n\nShankar: sitar\n\nBaaba Maal: voice"


@pytest.mark.parametrize("chosen, rejected, why", [
    ("\n\nHuman: a\n\nAssistant: x\n\nHuman: more\n\nAssistant: y", "\n\nHuman: a\n\nAssistant: z", "differ before"),
    ("\n\nHuman: a\n\nAssistant: x\n\nHuman: b", "\n\nHuman: a\n\nAssistant: z", "Human turn"),
    ("\n\nHuman: a\n\nAssistant: ", "\n\nHuman: a\n\nAssistant: z", "empty"),
    ("\n\nHuman: a\n\nAssistant: same", "\n\nHuman: a\n\nAssistant: same", "identical"),
    ("Human: a\n\nAssistant: x", "Human: a\n\nAssistant: y", "Human turn"),
    ("\n\nHuman: a", "\n\nHuman: a", "no assistant"),
    (None, "\n\nHuman: a\n\nAssistant: y", "not text"),
])
def test_malformed_records_are_rejected_with_a_reason(chosen, rejected, why):
    with pytest.raises(MalformedRecord, match=why):
        split_record(chosen, rejected)


# ---- the task on hand-written files ---------------------------------------------------------------------
def test_malformed_records_are_dropped_with_a_counted_warning(tmp_path, caplog):
    bad = [
        {"chosen": "\n\nHuman: q\n\nAssistant: same", "rejected": "\n\nHuman: q\n\nAssistant: same"},
        {"chosen": "\n\nHuman: q\n\nAssistant: ", "rejected": "\n\nHuman: q\n\nAssistant: y"},
        {"chosen": "\n\nHuman: r\n\nAssistant: ", "rejected": "\n\nHuman: r\n\nAssistant: y"},
        {"rejected": "\n\nHuman: r\n\nAssistant: y"},  # no chosen
    ]
    write_records(tmp_path, "helpful-base_test.jsonl.gz", numbered(20, bad))
    with caplog.at_level(logging.WARNING, logger="workbench.tasks.hh_rlhf"):
        task = HHRLHFTask(str(tmp_path), val_size=2, test_size=3)
    assert sum(task.dropped.values()) == 4
    assert task.dropped["empty final reply"] == 2 and task.dropped["identical final replies"] == 1
    assert "dropped 4 of 24 records" in caplog.text
    assert sum(len(s) for s in task.splits.values()) == 20


def test_splits_are_seeded_disjoint_and_sized(tmp_path):
    # 30 questions, 2 dialogues branching from each: a question never sits in two splits
    records = [r for r in numbered(30) for _ in range(2)]
    records = [{"chosen": r["chosen"] + f" v{i}", "rejected": r["rejected"]} for i, r in enumerate(records)]
    write_records(tmp_path, "helpful-base_test.jsonl.gz", records)
    a = HHRLHFTask(str(tmp_path), val_size=5, test_size=7, seed=1)
    b = HHRLHFTask(str(tmp_path), val_size=5, test_size=7, seed=1)
    c = HHRLHFTask(str(tmp_path), val_size=5, test_size=7, seed=2)
    # 7 test pairs take 4 questions (the 4th gives 1 of its 2), 5 validation pairs 3: 2 pairs left out, 46 to train
    assert {k: len(v) for k, v in a.splits.items()} == {"train": 46, "validation": 5, "test": 7}
    for split in ("train", "validation", "test"):
        assert a.split(split)["chosen"] == b.split(split)["chosen"]
    assert a.split("test")["chosen"] != c.split("test")["chosen"]
    questions = {s: {opening_question(p) for p in a.split(s)["prompt"]} for s in ("train", "validation", "test")}
    assert not questions["train"] & questions["test"] and not questions["train"] & questions["validation"]
    assert not questions["validation"] & questions["test"]
    small = HHRLHFTask(str(tmp_path), val_size=5, test_size=7, train_size=10, seed=1)
    assert len(small.split("train")) == 10 and small.split("test")["chosen"] == a.split("test")["chosen"]


def test_both_subsets_and_prompt_length_filter(tmp_path):
    write_records(tmp_path, "helpful-base_test.jsonl.gz", numbered(10))
    harmless = [{"chosen": "\n\nHuman: " + "long " * 40 + f"{i}\n\nAssistant: no", "rejected": "\n\nHuman: " + "long " * 40
                 + f"{i}\n\nAssistant: sure"} for i in range(10)]
    write_records(tmp_path, "harmless-base_test.jsonl.gz", harmless)
    both = HHRLHFTask(str(tmp_path), subset="both", val_size=2, test_size=2)
    assert sum(len(s) for s in both.splits.values()) == 20
    assert set(both.split("train")["subset"]) | set(both.split("test")["subset"]) <= {"helpful", "harmless"}
    short = HHRLHFTask(str(tmp_path), subset="both", val_size=2, test_size=2, max_prompt_chars=100)
    assert sum(len(s) for s in short.splits.values()) == 10
    assert all(len(p) <= 100 for s in short.splits.values() for p in s["prompt"])


def test_conversational_rows_carry_the_same_pairs_as_standard_rows(tmp_path):
    write_records(tmp_path, "helpful-base_test.jsonl.gz", numbered(12, [MULTI_TURN]))
    std = HHRLHFTask(str(tmp_path), val_size=2, test_size=2, format="standard")
    conv = HHRLHFTask(str(tmp_path), val_size=2, test_size=2, format="conversational")
    for split in ("train", "validation", "test"):
        for s, c in zip(std.split(split), conv.split(split), strict=True):
            assert isinstance(c["prompt"], list) and c["prompt"][0]["role"] == "user"
            assert c["chosen"][0]["role"] == "assistant" and len(c["chosen"]) == 1
            assert hh_layout(c["prompt"]) == s["prompt"]
            assert " " + c["chosen"][0]["content"] == s["chosen"] and " " + c["rejected"][0]["content"] == s["rejected"]
            assert transcript(c["prompt"], c["chosen"]) == transcript(s["prompt"], s["chosen"]) == s["prompt"] + s["chosen"]
            assert s["target"] == s["chosen"] and c["target"] == c["chosen"][0]["content"]


def _tiny_policy(texts):
    cfg = OmegaConf.create({"arch": "llama", "hidden_size": 16, "intermediate_size": 32, "num_layers": 1, "num_heads": 2,
                            "num_kv_heads": 1, "max_position_embeddings": 512, "dtype": "float32",
                            "tokenizer": {"vocab_size": 300}})
    return build_tiny(cfg, texts)


def test_standard_and_conversational_prompts_give_the_same_tokens(tmp_path):
    write_records(tmp_path, "helpful-base_test.jsonl.gz", numbered(12, [MULTI_TURN]))
    std = HHRLHFTask(str(tmp_path), val_size=2, test_size=2)
    conv = HHRLHFTask(str(tmp_path), val_size=2, test_size=2, format="conversational")
    encoder = PairEncoder(_tiny_policy(list(std.corpus())), max_prompt_length=256, max_completion_length=64)
    s_rows, c_rows = list(std.split("train")), list(conv.split("train"))
    assert [encoder.prompt_text(r["prompt"]) for r in c_rows] == [r["prompt"] for r in s_rows]
    s_ids, s_mask = encoder.prompts([r["prompt"] for r in s_rows])
    c_ids, c_mask = encoder.prompts([r["prompt"] for r in c_rows])
    assert s_ids.equal(c_ids) and s_mask.equal(c_mask)
    # the replies too, once the layout's separator space is in front of the conversational content
    spaced = [" " + r["chosen"][0]["content"] for r in c_rows]
    assert encoder.completions(spaced)[0].equal(encoder.completions([r["chosen"] for r in s_rows])[0])


def test_standard_and_conversational_pairs_give_the_same_tokens(tmp_path):
    write_records(tmp_path, "helpful-base_test.jsonl.gz", numbered(12, [MULTI_TURN]))
    std = HHRLHFTask(str(tmp_path), val_size=2, test_size=2)
    conv = HHRLHFTask(str(tmp_path), val_size=2, test_size=2, format="conversational")
    encoder = PairEncoder(_tiny_policy(list(std.corpus())), max_prompt_length=256, max_completion_length=64)
    a, b = encoder.pairs(list(std.split("train"))), encoder.pairs(list(conv.split("train")))
    assert all(a[k].equal(b[k]) for k in a)


# ---- the shipped data -------------------------------------------------------------------------------------
def test_shipped_files_parse_with_few_drops():
    task = HHRLHFTask(str(DATA), subset="both", val_size=200, test_size=200)
    assert sum(task.dropped.values()) == 24  # of 4,666 records (2,354 helpful + 2,312 harmless)
    assert len(task.split("test")) == len(task.split("validation")) == 200
    assert len(task.split("train")) > 4000
    for row in task.split("test"):
        assert row["prompt"].startswith("\n\nHuman: ") and row["prompt"].endswith("\n\nAssistant:")
        assert row["chosen"] != row["rejected"] and row["chosen"].strip() and row["rejected"].strip()


def test_config_builds_the_task_and_dpo_accepts_it(fast_cfg):
    from workbench.config import validate

    cfg = fast_cfg("dpo", ["task=hh_rlhf", "task.max_prompt_chars=500"])
    validate(cfg)
    task = build_task(cfg.task)
    assert cfg.task.pairs and cfg.task.judge is None and len(task.split("train")) == 256
    assert all(len(p) <= 500 for p in task.split("train")["prompt"])


# ---- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, field", [
    ({"subset": "helpfull"}, "task.subset"),
    ({"format": "chatml"}, "task.format"),
    ({"val_size": 0}, "task.val_size"),
    ({"test_size": 3000}, "task.test_size"),
    ({"train_size": -1}, "task.train_size"),
    ({"max_prompt_chars": 0}, "task.max_prompt_chars"),
    ({"max_prompt_chars": 10}, "task.test_size"),  # nothing that short: the fix names max_prompt_chars
    ({"data_dir": "/nonexistent/hh"}, "task.data_dir"),
])
def test_bad_input_names_the_field(kwargs, field):
    with pytest.raises(ConfigError) as e:
        HHRLHFTask(**{"data_dir": str(DATA), **kwargs})
    assert e.value.field == field and "->" in str(e.value)


def test_unreadable_file_is_a_config_error(tmp_path):
    (tmp_path / "helpful-base_test.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ConfigError, match="task.data_dir"):
        HHRLHFTask(str(tmp_path), val_size=1, test_size=1)


# ---- a run ------------------------------------------------------------------------------------------------
def test_dpo_on_hh_from_the_sft_warm_start_runs(fast_cfg):
    """The SFT base trains on target (= chosen) and its greedy check reads answer; DPO then trains on the pairs."""
    from workbench.train import run

    summary = run(fast_cfg("dpo", ["task=hh_rlhf", "task.max_prompt_chars=400", "task.max_new_tokens=8",
                                   "method.max_prompt_length=96", "method.max_completion_length=32", "method.eval.batch_size=8"]))
    m = summary["metrics"]
    assert summary["task"] == "hh_rlhf" and m["steps"] == 4
    assert m["test_before/reward_accuracy"] == 0.5  # the policy is its reference before the first step
    assert 0.0 <= m["test/reward_accuracy"] <= 1.0 and m["train/loss"] > 0
