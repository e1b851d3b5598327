"""Tasks (synthetic arithmetic, GSM8K on the real data) and the reward registry, checked on their outputs."""

from __future__ import annotations

import json
import re

import pytest
import torch

from workbench import ROOT
from workbench.errors import ConfigError
from workbench.rewards import REWARDS, RewardSet
from workbench.tasks.arithmetic import ArithmeticTask
from workbench.tasks.base import normalize_number
from workbench.tasks.gsm8k import GSM8KTask

GSM8K_DIR = ROOT / "data" / "gsm8k"
SMALL = dict(train_size=300, val_size=50, test_size=50)


def prompts(ds) -> list[str]:
    return list(ds["prompt"])


def evaluate(prompt: str) -> int:
    expr = prompt.removesuffix("=")
    assert re.fullmatch(r"\d+(?:[-+*]\d+)+", expr), prompt
    return eval(expr, {"__builtins__": {}})


# ---- arithmetic -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def arith() -> ArithmeticTask:
    return ArithmeticTask(num_operands=2, max_value=999, seed=7, **SMALL)


def test_arithmetic_same_seed_same_splits(arith):
    again = ArithmeticTask(num_operands=2, max_value=999, seed=7, **SMALL)
    for split in ("train", "validation", "test"):
        assert arith.splits[split].to_list() == again.splits[split].to_list()


def test_arithmetic_different_seed_different_splits(arith):
    other = ArithmeticTask(num_operands=2, max_value=999, seed=8, **SMALL)
    for split in ("train", "validation", "test"):
        assert prompts(arith.splits[split]) != prompts(other.splits[split])


def test_arithmetic_split_sizes_and_disjoint(arith):
    sets = {s: set(prompts(arith.splits[s])) for s in ("train", "validation", "test")}
    assert {s: len(arith.splits[s]) for s in sets} == {"train": 300, "validation": 50, "test": 50}
    # no duplicate inside a split either
    assert {s: len(v) for s, v in sets.items()} == {"train": 300, "validation": 50, "test": 50}
    assert not sets["train"] & sets["validation"]
    assert not sets["train"] & sets["test"]
    assert not sets["validation"] & sets["test"]


def test_arithmetic_targets_are_the_value(arith):
    for split in ("train", "validation", "test"):
        for row in arith.splits[split]:
            assert row["prompt"].endswith("=")
            assert row["target"] == row["answer"] == str(evaluate(row["prompt"]))


def test_arithmetic_difficulty_knobs():
    task = ArithmeticTask(num_operands=3, min_value=0, max_value=9, operators=["+", "-", "*"],
                          train_size=300, val_size=20, test_size=20, seed=1)
    ops_seen = set()
    negative = 0
    for split in ("train", "validation", "test"):
        for row in task.splits[split]:
            expr = row["prompt"][:-1]
            operands = [int(v) for v in re.split(r"[-+*]", expr)]
            ops = re.findall(r"[-+*]", expr)
            assert len(operands) == 3 and len(ops) == 2
            assert all(0 <= v <= 9 for v in operands)
            ops_seen.update(ops)
            value = evaluate(row["prompt"])  # Python precedence: '*' binds first
            assert row["target"] == str(value)
            negative += value < 0
            assert task.verify(row["target"], row["answer"])
    assert ops_seen == {"+", "-", "*"}
    assert negative > 0  # subtraction gives negative targets, and they are kept


def test_arithmetic_single_operator_as_string():
    # task.operators='*' on the command line is a string, not a list
    task = ArithmeticTask(operators="*", train_size=20, val_size=2, test_size=2, seed=0)
    assert all("*" in p for p in prompts(task.splits["train"]))


def test_arithmetic_min_value_and_operator_subset():
    task = ArithmeticTask(num_operands=2, min_value=50, max_value=60, operators=["*"],
                          train_size=50, val_size=5, test_size=5, seed=3)
    for row in task.splits["train"]:
        a, b = map(int, row["prompt"][:-1].split("*"))
        assert 50 <= a <= 60 and 50 <= b <= 60
        assert row["target"] == str(a * b)


def test_arithmetic_levels_label_their_difficulty():
    task = ArithmeticTask(num_operands=[4, 2], max_value=[9, 99], train_size=400, val_size=40, test_size=100, seed=5)
    assert task.difficulty_levels() == ["2ops_max99", "4ops_max9"]
    for split in ("train", "validation", "test"):
        rows = task.splits[split]
        for row in rows:
            operands = [int(v) for v in re.split(r"[-+*]", row["prompt"][:-1])]
            assert row["difficulty"] == ("4ops_max9" if len(operands) == 4 else "2ops_max99")
            assert max(operands) <= (9 if len(operands) == 4 else 99)
            assert row["target"] == str(evaluate(row["prompt"]))
        share = sum(d == "4ops_max9" for d in rows["difficulty"]) / len(rows)
        assert 0.3 < share < 0.7  # each problem draws its level uniformly
    # a whole number is repeated over the levels of the other list
    counts = ArithmeticTask(num_operands=[2, 3], max_value=49, **SMALL)
    assert counts.difficulty_levels() == ["2ops_max49", "3ops_max49"]
    # without levels: no difficulty column, and the draws of the code before levels existed
    plain = ArithmeticTask(num_operands=2, max_value=99, train_size=50, val_size=5, test_size=5, seed=0)
    assert "difficulty" not in plain.splits["train"].column_names and plain.difficulty_levels() == []
    assert plain.splits["test"]["prompt"][:3] == ["49+97=", "5+33=", "51+38="]


@pytest.mark.parametrize("kwargs, field", [
    (dict(num_operands=[1, 2]), "task.num_operands"),
    (dict(num_operands=[2, 2]), "task.num_operands"),
    (dict(num_operands=[]), "task.num_operands"),
    (dict(num_operands=[2, "x"]), "task.num_operands"),
    (dict(num_operands=[2, 3], max_value=[9, 99, 999]), "task.num_operands"),
    (dict(max_value=[99, 0]), "task.max_value"),
])
def test_arithmetic_bad_levels_name_their_field(kwargs, field):
    with pytest.raises(ConfigError) as info:
        ArithmeticTask(**{**SMALL, **kwargs})
    assert info.value.field == field


def test_arithmetic_levels_space_is_checked_per_level():
    # 2 operands of 0..9: 100 expressions, too few for half of 300 problems even though 4 operands of 0..9 have 10,000
    with pytest.raises(ConfigError) as info:
        ArithmeticTask(num_operands=[2, 4], max_value=9, train_size=280, val_size=10, test_size=10)
    assert info.value.field == "task.train_size" and "2 operands" in str(info.value)


@pytest.mark.parametrize("completion", ["46", " 46", "46 ", "46\n", "46 and more text", "46.0", "046"])
def test_arithmetic_verify_accepts(arith, completion):
    assert arith.verify(completion, "46")


@pytest.mark.parametrize("completion", ["47", "", "   ", "abc", "-46", "the answer is 46", "4.6", "460"])
def test_arithmetic_verify_rejects(arith, completion):
    assert not arith.verify(completion, "46")


def test_arithmetic_negative_answer(arith):
    assert arith.verify("-12", "-12")
    assert not arith.verify("12", "-12")


def test_arithmetic_too_many_problems_names_train_size():
    # 2 operands of 0..9 with '+': only 100 distinct expressions
    with pytest.raises(ConfigError) as info:
        ArithmeticTask(num_operands=2, min_value=0, max_value=9, train_size=100, val_size=10, test_size=10)
    assert info.value.field == "task.train_size"
    assert str(info.value).startswith("task.train_size:") and "->" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, field", [
    (dict(num_operands=1), "task.num_operands"),
    (dict(operators=["/"]), "task.operators"),
    (dict(operators=[]), "task.operators"),
    (dict(min_value=5, max_value=5), "task.max_value"),
    (dict(val_size=0), "task.val_size"),
    (dict(test_size=-1), "task.test_size"),
    (dict(num_operands="abc"), "task.num_operands"),
    (dict(max_value=9.5), "task.max_value"),
    (dict(train_size=None), "task.train_size"),
])
def test_arithmetic_bad_knobs_name_their_field(kwargs, field):
    with pytest.raises(ConfigError) as info:
        ArithmeticTask(**{**SMALL, **kwargs})
    assert info.value.field == field


# ---- GSM8K ------------------------------------------------------------------------------------------------
def raw(split: str) -> list[dict]:
    return [json.loads(line) for line in (GSM8K_DIR / f"{split}.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def gsm() -> GSM8KTask:
    return GSM8KTask(data_dir=str(GSM8K_DIR), val_size=200)


def test_gsm8k_split_sizes(gsm):
    assert len(raw("train")) == 7473 and len(raw("test")) == 1319
    assert len(gsm.splits["train"]) == 7473 - 200
    assert len(gsm.splits["validation"]) == 200
    assert len(gsm.splits["test"]) == 1319


def test_gsm8k_train_and_test_size_caps():
    task = GSM8KTask(data_dir=str(GSM8K_DIR), val_size=20, train_size=100, test_size=30)
    assert [len(task.splits[s]) for s in ("train", "validation", "test")] == [100, 20, 30]


def test_gsm8k_validation_is_held_out_and_seeded(gsm):
    train, val = prompts(gsm.splits["train"]), prompts(gsm.splits["validation"])
    # train + validation together are exactly the original train file
    expected = sorted(f"Question: {r['question']}\nAnswer:" for r in raw("train"))
    assert sorted(train + val) == expected
    again = GSM8KTask(data_dir=str(GSM8K_DIR), val_size=200, train_size=10, test_size=1)
    assert prompts(again.splits["validation"]) == val
    other = GSM8KTask(data_dir=str(GSM8K_DIR), val_size=200, train_size=10, test_size=1, seed=99)
    assert prompts(other.splits["validation"]) != val


def test_gsm8k_targets_drop_calculator_and_keep_answer(gsm):
    first = {r["question"]: r["answer"] for r in raw("test")}
    for split in ("train", "validation", "test"):
        for row in gsm.splits[split]:
            target, answer = row["target"], row["answer"]
            assert "<<" not in target and ">>" not in target
            tail = target.rsplit("####", 1)[1].strip()
            assert normalize_number(answer) == normalize_number(tail) is not None
            assert gsm.verify(target, answer)  # the SFT target is itself a correct completion
    row = gsm.splits["test"][0]
    question = row["prompt"].removeprefix("Question: ").removesuffix("\nAnswer:")
    assert re.sub(r"<<[^>]*>>", "", first[question]).strip() == row["target"].strip()


def test_gsm8k_known_record():
    task = GSM8KTask(data_dir=str(GSM8K_DIR), val_size=1, train_size=None, test_size=None)
    rows = {r["prompt"]: r for s in ("train", "validation") for r in task.splits[s]}
    natalia = next(r for p, r in rows.items() if p.startswith("Question: Natalia sold clips"))
    assert natalia["answer"] == "72"
    assert natalia["target"] == (" Natalia sold 48/2 = 24 clips in May.\n"
                                 "Natalia sold 48+24 = 72 clips altogether in April and May.\n#### 72")


def test_gsm8k_comma_answers_compare_as_numbers(gsm):
    with_comma = [r["answer"] for r in gsm.splits["test"] if "," in r["answer"]]
    assert with_comma, "GSM8K test has answers like '2,125'"
    for a in with_comma[:20]:
        plain = a.replace(",", "")
        assert gsm.verify(f"so the total is\n#### {plain}", a)
        assert gsm.verify(f"#### {a}", plain)


@pytest.mark.parametrize("completion", [
    "She sold 48 + 24 = 72 clips.\n#### 72",
    "#### 72",
    "####72",
    "She sold 72 clips.",
    "Half is 24, so 48 + 24 = 72",
    "#### 72\n\nQuestion: next one has 5 apples",  # '####' wins over later numbers
    "#### 72.00",
])
def test_gsm8k_verify_accepts(gsm, completion):
    assert gsm.verify(completion, "72")


@pytest.mark.parametrize("completion", [
    "#### 73",
    "She sold 72 clips, then 5 more",
    "72 was wrong.\n#### 71",
    "",
    "no numbers here",
    "#### -72",
])
def test_gsm8k_verify_rejects(gsm, completion):
    assert not gsm.verify(completion, "72")


@pytest.mark.parametrize("text, expected", [
    ("3.0", "3"), ("3", "3"), ("-5", "-5"), ("1,000.50", "1000.5"), ("1,234", "1234"), ("72.", "72"),
    (" 42 ", "42"), ("0.25", "0.25"), ("-0", "0"), ("abc", None), ("", None), (None, None), ("1.2.3", None),
    ("nan", None), ("inf", None),
    ("9007199254740993", "9007199254740993"),  # past float precision: must not collapse to ...992
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


def test_normalize_number_equalities():
    assert normalize_number("1,234") == normalize_number("1234")
    assert normalize_number("3.0") == normalize_number("3")
    assert normalize_number("3.5") != normalize_number("3")
    assert normalize_number("9007199254740993") != normalize_number("9007199254740992")


@pytest.mark.parametrize("kwargs, field", [
    (dict(val_size=0), "task.val_size"),
    (dict(val_size=10_000), "task.val_size"),
    (dict(train_size=0), "task.train_size"),
    (dict(train_size=-5), "task.train_size"),
    (dict(test_size=0), "task.test_size"),
])
def test_gsm8k_bad_sizes_name_their_field(kwargs, field):
    with pytest.raises(ConfigError) as info:
        GSM8KTask(data_dir=str(GSM8K_DIR), **kwargs)
    assert info.value.field == field


# ---- rewards ----------------------------------------------------------------------------------------------
def test_reward_weight_scales_correctness(arith):
    completions = ["46", "47", "46 more", ""]
    answers = ["46", "46", "46", "46"]
    single = RewardSet([{"name": "correctness", "weight": 1.0}], arith)
    double = RewardSet([{"name": "correctness", "weight": 2.0}], arith)
    total1, parts1 = single(["x="] * 4, completions, answer=answers)
    total2, parts2 = double(["x="] * 4, completions, answer=answers)
    assert torch.equal(parts1["correctness"], torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert torch.equal(parts2["correctness"], parts1["correctness"])  # components are reported unweighted
    assert torch.equal(total2, 2 * parts1["correctness"])
    assert torch.equal(total1, parts1["correctness"])


def test_reward_weights_add_up(arith):
    both = RewardSet([{"name": "correctness", "weight": 2.0}, {"name": "correctness", "weight": 0.5}], arith)
    total, _ = both(["x="] * 2, ["46", "1"], answer=["46", "46"])
    assert torch.allclose(total, torch.tensor([2.5, 0.0]))


def test_unknown_reward_lists_valid_names(arith):
    with pytest.raises(ConfigError) as info:
        RewardSet([{"name": "correctness"}, {"name": "nope"}], arith)
    message = str(info.value)
    assert info.value.field == "method.rewards[1].name"
    assert "'nope'" in message
    for name in REWARDS:
        assert name in message.split("->", 1)[1]


def test_empty_rewards_is_an_error(arith):
    with pytest.raises(ConfigError) as info:
        RewardSet([], arith)
    assert info.value.field == "method.rewards"
