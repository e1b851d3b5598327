"""SVAMP, MATH-500 (real data in data/) and synthetic Countdown: splits and verifiers."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from workbench import ROOT
from workbench.errors import ConfigError
from workbench.tasks.countdown import CountdownTask, evaluate
from workbench.tasks.math500 import MATH500Task, last_boxed
from workbench.tasks.svamp import SVAMPTask

SPLITS = ("train", "validation", "test")
SVAMP_DIR = str(ROOT / "data" / "svamp")
MATH_DIR = str(ROOT / "data" / "math500")


def prompts(task, split) -> list[str]:
    return list(task.splits[split]["prompt"])


def assert_disjoint(task) -> None:
    sets = {s: set(prompts(task, s)) for s in SPLITS}
    assert all(len(sets[s]) == len(task.splits[s]) for s in SPLITS)  # no duplicate inside a split
    assert not sets["train"] & sets["validation"]
    assert not sets["train"] & sets["test"]
    assert not sets["validation"] & sets["test"]


def test_data_is_vendored_with_licenses():
    for folder, files in (("svamp", ("SVAMP.json", "LICENSE", "SOURCE.md")),
                          ("math500", ("test.jsonl", "LICENSE", "LICENSE.hendrycks-math", "SOURCE.md"))):
        for name in files:
            assert (ROOT / "data" / folder / name).is_file(), f"data/{folder}/{name}"


# ---- SVAMP ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def svamp() -> SVAMPTask:
    return SVAMPTask(data_dir=SVAMP_DIR)


def test_svamp_sizes_cover_the_file_and_are_disjoint(svamp):
    assert {s: len(svamp.splits[s]) for s in SPLITS} == {"train": 600, "validation": 100, "test": 300}
    assert_disjoint(svamp)


def test_svamp_seeded():
    a, b = SVAMPTask(SVAMP_DIR, seed=3, train_size=50), SVAMPTask(SVAMP_DIR, seed=3, train_size=50)
    c = SVAMPTask(SVAMP_DIR, seed=4, train_size=50)
    for s in SPLITS:
        assert prompts(a, s) == prompts(b, s)
        assert prompts(a, s) != prompts(c, s)
    assert len(a.splits["train"]) == 50


def test_svamp_known_record_and_targets(svamp):
    rows = {r["prompt"]: r for s in SPLITS for r in svamp.splits[s]}
    prompt = ("Question: Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars on each pack. "
              "How much do you have to pay to buy each pack?\nAnswer:")
    assert rows[prompt]["answer"] == "51"
    assert rows[prompt]["target"] == " ( 76 - 25 ) = 51\n#### 51"
    for row in rows.values():
        assert svamp.verify(row["target"], row["answer"])


@pytest.mark.parametrize("completion, ok", [
    ("#### 51", True), ("76 - 25 = 51", True), ("51.0", True), ("#### 52", False), ("51 was wrong\n#### 50", False),
    ("", False),
])
def test_svamp_verify(svamp, completion, ok):
    assert svamp.verify(completion, "51") is ok


@pytest.mark.parametrize("kwargs, field", [
    (dict(test_size=0), "task.test_size"), (dict(val_size=600, test_size=400), "task.test_size"),
    (dict(train_size=0), "task.train_size"), (dict(data_dir="/no/such/dir"), "task.data_dir"),
])
def test_svamp_bad_knobs(kwargs, field):
    with pytest.raises(ConfigError) as info:
        SVAMPTask(**{"data_dir": SVAMP_DIR, **kwargs})
    assert info.value.field == field


# ---- MATH-500 ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def math500() -> MATH500Task:
    return MATH500Task(data_dir=MATH_DIR)


def test_math500_partition(math500):
    assert {s: len(math500.splits[s]) for s in SPLITS} == {"train": 250, "validation": 50, "test": 200}
    assert_disjoint(math500)
    again, other = MATH500Task(MATH_DIR), MATH500Task(MATH_DIR, seed=9)
    assert prompts(again, "test") == prompts(math500, "test") != prompts(other, "test")


def test_math500_levels_filter():
    easy = MATH500Task(MATH_DIR, levels=[1], val_size=5, test_size=20)
    raw = [json.loads(line) for line in open(f"{MATH_DIR}/test.jsonl")]
    level1 = {r["problem"] for r in raw if r["level"] == 1}
    got = [p for s in SPLITS for p in prompts(easy, s)]
    assert len(got) == len(level1) and all(any(q in p for q in level1) for p in got[:10])


def test_math500_gold_solutions_verify(math500):
    rows = list(math500.splits["test"])[:25]  # math-verify is ~10 ms a call; all 500 pass, checked offline
    for row in rows:
        assert math500.verify(row["target"], row["answer"]), row["answer"]
        assert math500.verify(f"so \\boxed{{{row['answer']}}}", row["answer"])


@pytest.mark.parametrize("completion, ok", [
    ("\\boxed{\\frac{14}{3}}", True), ("\\boxed{14/3}", True), ("the answer is $\\frac{28}{6}$", True),
    ("\\boxed{\\frac{3}{14}}", False), ("no answer", False), ("", False),
])
def test_math500_verify(math500, completion, ok):
    assert math500.verify(completion, "\\frac{14}{3}") is ok


def test_last_boxed_balances_braces():
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{unclosed") is None and last_boxed("none") is None


@pytest.mark.parametrize("kwargs, field", [
    (dict(levels=[6]), "task.levels"), (dict(val_size=0), "task.val_size"),
    (dict(test_size=490, val_size=10), "task.test_size"), (dict(train_size=-1), "task.train_size"),
])
def test_math500_bad_knobs(kwargs, field):
    with pytest.raises(ConfigError) as info:
        MATH500Task(**{"data_dir": MATH_DIR, **kwargs})
    assert info.value.field == field


# ---- Countdown --------------------------------------------------------------------------------------------
SMALL = dict(train_size=300, val_size=30, test_size=30)


@pytest.fixture(scope="module")
def countdown() -> CountdownTask:
    return CountdownTask(seed=5, **SMALL)


def problem_key(row) -> tuple:
    data = json.loads(row["answer"])
    return tuple(sorted(data["numbers"])), data["target"]


def test_countdown_seeded_and_disjoint(countdown):
    again, other = CountdownTask(seed=5, **SMALL), CountdownTask(seed=6, **SMALL)
    for s in SPLITS:
        assert countdown.splits[s].to_list() == again.splits[s].to_list()
        assert prompts(countdown, s) != prompts(other, s)
    keys = {s: {problem_key(r) for r in countdown.splits[s]} for s in SPLITS}
    assert {s: len(keys[s]) for s in SPLITS} == {"train": 300, "validation": 30, "test": 30}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["validation"]
    assert not keys["validation"] & keys["test"]


def test_countdown_targets_solve_their_problem(countdown):
    for s in SPLITS:
        for row in countdown.splits[s]:
            numbers, target = json.loads(row["answer"]).values()
            assert row["prompt"].startswith(f"Using the numbers {numbers}, make {target}.")
            assert countdown.verify(row["target"], row["answer"])
            value, used = evaluate(row["target"])
            assert value == target and used == Counter(numbers)  # the generator uses every number once


def test_countdown_difficulty_knobs():
    task = CountdownTask(min_numbers=2, max_numbers=2, max_number=9, max_target=30, operators=["+", "*"],
                         train_size=40, val_size=5, test_size=5, seed=1)
    for s in SPLITS:
        for row in task.splits[s]:
            data = json.loads(row["answer"])
            assert len(data["numbers"]) == 2 and all(1 <= n <= 9 for n in data["numbers"])
            assert 1 <= data["target"] <= 30
            assert set(row["target"]) <= set("0123456789+*() ")


ANSWER = json.dumps({"numbers": [3, 7, 25], "target": 46})


@pytest.mark.parametrize("completion", [
    "3*7+25", " (7*3)+25", "25+3*7 = 46", "<think>try</think><answer>25 + 7*3</answer>", "3*7+25\nmore text",
])
def test_countdown_accepts(countdown, completion):
    assert countdown.verify(completion, ANSWER)


@pytest.mark.parametrize("completion", [
    "25+25-4",                    # 25 used twice, 4 not given
    "3*7+25+0",                   # 0 is not a given number
    "46", "3*7+24", "",
    "__import__('os').system('echo hi')", "abs(-46)", "3**2*5+1", "(3*7+25).real", "46.0",
    "-3+7*7", "3*7+25; 1", "lambda: 46", "[3*7+25][0]", "7/(3-3)",
])
def test_countdown_rejects(countdown, completion):
    assert not countdown.verify(completion, ANSWER)


def test_countdown_division_is_exact(countdown):
    answer = json.dumps({"numbers": [7, 2, 4], "target": 14})
    assert countdown.verify("7/2*4", answer)  # 3.5 * 4 with exact fractions
    assert not countdown.verify("7/2", json.dumps({"numbers": [7, 2], "target": 3}))
    assert countdown.verify("2*2", json.dumps({"numbers": [2, 2, 5], "target": 4}))  # a number given twice


@pytest.mark.parametrize("kwargs, field", [
    (dict(min_numbers=1), "task.min_numbers"), (dict(max_numbers=2), "task.max_numbers"),
    (dict(max_numbers=7), "task.max_numbers"), (dict(max_number=1), "task.max_number"),
    (dict(max_target=0), "task.max_target"), (dict(operators=["^"]), "task.operators"),
    (dict(val_size=0), "task.val_size"), (dict(train_size="many"), "task.train_size"),
    (dict(min_numbers=2, max_numbers=2, max_number=3, max_target=5, train_size=200), "task.train_size"),
])
def test_countdown_bad_knobs(kwargs, field):
    with pytest.raises(ConfigError) as info:
        CountdownTask(**{**SMALL, **kwargs})
    assert info.value.field == field
