"""Every registered reward on hand-computed values, RewardSet aggregation/state, and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from workbench.errors import ConfigError
from workbench.rewards import REWARDS, RewardSet
from workbench.tasks.arithmetic import ArithmeticTask


@pytest.fixture(scope="module")
def task() -> ArithmeticTask:
    # verify(c, '46'): the number at the start of the completion must be 46
    return ArithmeticTask(train_size=20, val_size=2, test_size=2, seed=0)


def score(task, spec: dict, completions, **fields) -> list[float]:
    fields.setdefault("answer", ["46"] * len(completions))
    _, parts = RewardSet([spec], task)(["p="] * len(completions), completions, **fields)
    return parts[spec["name"]].tolist()


def test_registry_names():
    assert set(REWARDS) >= {"correctness", "exact_answer", "math_verify", "format", "length", "soft_overlong",
                            "cosine_length", "bleu", "tool_cost", "hapo_length", "reward_model"}


# ---- verifiable ------------------------------------------------------------------------------------------
def test_correctness_and_exact_answer_agree(task):
    completions = ["46", "47", "46.0 more", ""]
    assert score(task, {"name": "correctness"}, completions) == [1.0, 0.0, 1.0, 0.0]
    assert score(task, {"name": "exact_answer"}, completions) == [1.0, 0.0, 1.0, 0.0]


def test_math_verify_equivalence(task):
    completions = ["so the answer is \\boxed{14/3}", "$\\boxed{\\frac{28}{6}}$", "\\boxed{5}", "", "4.6"]
    assert score(task, {"name": "math_verify"}, completions, answer=["\\frac{14}{3}"] * 5) == [1, 1, 0, 0, 0]
    # last expression when nothing is boxed; an unparsable gold answer scores 0, never 1
    assert score(task, {"name": "math_verify"}, ["2 + 2 = 4, so 0.5"], answer=["\\frac{1}{2}"]) == [1.0]
    assert score(task, {"name": "math_verify"}, ["\\boxed{3}"], answer=[""]) == [0.0]


def test_format_default_and_custom(task):
    good = "<think>add 20\nand 26</think>\n<answer>46</answer>"
    completions = [good, "<answer>46</answer>", good + " trailing", "<think></think><answer>x</answer>"]
    assert score(task, {"name": "format"}, completions) == [1.0, 0.0, 0.0, 1.0]
    assert score(task, {"name": "format", "pattern": r"\d+"}, ["46", "46a"]) == [1.0, 0.0]


# ---- length ----------------------------------------------------------------------------------------------
def test_length_linear(task):
    spec = {"name": "length", "max_length": 10, "coef": -1.0}
    assert score(task, spec, ["a"] * 3, completion_lengths=[0, 5, 20]) == pytest.approx([0.0, -0.5, -1.0])
    # without token lengths, characters count
    assert score(task, spec, ["", "abcde"]) == pytest.approx([0.0, -0.5])


def test_soft_overlong_three_regions(task):
    # L_max = 10, L_cache = 4: 0 up to 6, linear to -1 at 10, -1 beyond
    spec = {"name": "soft_overlong", "max_length": 10, "cache_length": 4}
    got = score(task, spec, ["x"] * 5, completion_lengths=[3, 6, 8, 10, 11])
    assert got == pytest.approx([0.0, 0.0, -0.5, -1.0, -1.0])
    assert score(task, spec, ["x" * 7]) == pytest.approx([-0.25])  # characters when no token counts


def test_soft_overlong_without_cache_is_a_step(task):
    spec = {"name": "soft_overlong", "max_length": 10, "cache_length": 0}
    assert score(task, spec, ["x"] * 2, completion_lengths=[10, 11]) == [0.0, -1.0]


def test_cosine_length_boundaries(task):
    spec = {"name": "cosine_length", "max_len": 100}  # open-r1 defaults: wrong -1..-0.5, correct 0.5..1
    lengths = [0, 50, 100, 200]
    assert score(task, spec, ["46"] * 4, completion_lengths=lengths) == pytest.approx([1.0, 0.75, 0.5, 0.5])
    assert score(task, spec, ["47"] * 4, completion_lengths=lengths) == pytest.approx([-1.0, -0.75, -0.5, -0.5])


def test_hapo_history_over_two_calls_and_state_round_trip(task):
    rewards = RewardSet([{"name": "correctness"}, {"name": "hapo_length"}], task)
    prompts, answers = ["p="] * 3, ["46"] * 3
    # step 1: no history yet -> 0 for everyone; the shortest correct length (10) becomes h
    _, parts = rewards(prompts, ["46", "46", "47"], answer=answers, completion_lengths=[10, 20, 4])
    assert parts["hapo_length"].tolist() == [0.0, 0.0, 0.0]
    assert rewards.state_dict() == {"hapo_length": {"history": {"p=": 10}}}

    # step 2 against h = 10: correct cos(pi/2 * L/h) floored at -0.7, wrong min(0, .)
    completions = ["46", "46", "46", "47", "47", "47"]
    lengths = [5, 10, 20, 5, 15, 25]
    expected = [math.cos(math.pi / 4), 0.0, -0.7, 0.0, math.cos(3 * math.pi / 4), -1.0]
    _, parts = rewards(["p="] * 6, completions, answer=["46"] * 6, completion_lengths=lengths)
    assert parts["hapo_length"].tolist() == pytest.approx(expected, abs=1e-6)
    state = rewards.state_dict()
    assert state == {"hapo_length": {"history": {"p=": 5}}}

    # checkpoint -> JSON -> a fresh RewardSet continues with the same history
    resumed = RewardSet([{"name": "correctness"}, {"name": "hapo_length"}], task)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    _, again = resumed(["p="], ["46"], answer=["46"], completion_lengths=[5])
    _, original = rewards(["p="], ["46"], answer=["46"], completion_lengths=[5])
    assert again["hapo_length"].tolist() == original["hapo_length"].tolist() == pytest.approx([0.0])
    # a different prompt has its own (empty) history
    _, other = resumed(["q="], ["46"], answer=["46"], completion_lengths=[1])
    assert other["hapo_length"].tolist() == [0.0]


def test_state_load_is_strict(task):
    rewards = RewardSet([{"name": "hapo_length"}], task)
    with pytest.raises(ValueError, match="missing"):
        rewards.load_state_dict({})
    assert RewardSet([{"name": "correctness"}], task).state_dict() == {}


# ---- text ------------------------------------------------------------------------------------------------
def test_bleu_identical_empty_and_multi_reference(task):
    ref = "the cat sat on the mat today"
    got = score(task, {"name": "bleu"}, [ref, "", "   ", "the cat sat on a mat"], target=[ref] * 4)
    assert got[0] == pytest.approx(1.0) and got[1] == got[2] == 0.0
    assert 0.0 < got[3] < 1.0
    multi = score(task, {"name": "bleu"}, [ref], references=[["something else entirely", ref]])
    assert multi == pytest.approx([1.0])  # the best-matching reference counts


# ---- tools -----------------------------------------------------------------------------------------------
def test_tool_cost_grpo_with_groups(task):
    call = "<tool_call>"
    # group 1: correct samples use 1, 2, 3 calls -> n = 1; the wrong one scores 0
    # group 2: all wrong -> 0; group 3: a correct sample with 0 calls -> n = 0
    completions = [f"46 {call}", f"46 {call * 2}", "47", f"46 {call * 3}",
                   "47", f"47 {call}", "47", "47",
                   "46", f"46 {call * 2}", f"47 {call}", "46 no call"]
    rewards = RewardSet([{"name": "tool_cost", "alpha": 2.0, "smooth": 1.0}], task)
    _, parts = rewards(["p="] * 12, completions, group_size=4, answer=["46"] * 12)
    expected = [2 * 1.0, 2 * math.sin(2 * math.pi / 3), 0.0, 2 * math.sin(3 * math.pi / 4),
                0.0, 0.0, 0.0, 0.0,
                2 * 1.0, 2 * math.cos(2 * math.pi / 5), 0.0, 2 * 1.0]
    assert parts["tool_cost"].tolist() == pytest.approx(expected, abs=1e-6)


def test_tool_cost_ppo_form_and_custom_pattern(task):
    spec = {"name": "tool_cost", "mode": "ppo", "smooth": 2.0, "pattern": r"CALL\("}
    got = score(task, spec, ["46", "46 CALL(x)", "46 CALL(x) CALL(y)", "47 CALL(x)"])
    assert got == pytest.approx([1.0, math.cos(math.pi / 4), math.cos(2 * math.pi / 6), 0.0])


# ---- aggregation -----------------------------------------------------------------------------------------
def test_normalize_then_sum_2x3(task):
    specs = [{"name": "correctness", "weight": 1.0}, {"name": "length", "max_length": 10, "weight": 0.5}]
    completions = ["46", "0", "0", "46", "46", "46"]
    lengths = [2, 4, 6, 10, 0, 5]
    total, parts = RewardSet(specs, task, aggregation="normalize_then_sum")(
        ["p="] * 6, completions, group_size=3, answer=["46"] * 6, completion_lengths=lengths)
    # group 1: correctness [1,0,0] -> mean 1/3, unbiased std sqrt(1/3); length [-.2,-.4,-.6] -> std 0.2
    s = math.sqrt(1 / 3) + 1e-4
    c1 = [(2 / 3) / s, -(1 / 3) / s, -(1 / 3) / s]
    l1 = [0.2 / 0.2001, 0.0, -0.2 / 0.2001]
    # group 2: correctness all 1 -> 0 (zero std); length [-1, 0, -.5] -> mean -.5, std .5
    l2 = [-0.5 / 0.5001, 0.5 / 0.5001, 0.0]
    expected = [c + 0.5 * l for c, l in zip(c1, l1)] + [0.5 * l for l in l2]
    assert total.tolist() == pytest.approx(expected, abs=1e-5)
    assert parts["correctness"].tolist() == [1, 0, 0, 1, 1, 1]  # parts stay raw for logging
    weighted, _ = RewardSet(specs, task)(["p="] * 6, completions, group_size=3, answer=["46"] * 6,
                                         completion_lengths=lengths)
    assert weighted.tolist() == pytest.approx([0.9, -0.2, -0.3, 0.5, 1.0, 0.75])


def test_group_size_must_divide(task):
    with pytest.raises(ValueError, match="groups"):
        RewardSet([{"name": "correctness"}], task)(["p="] * 3, ["46"] * 3, group_size=2, answer=["46"] * 3)


# ---- reward model ----------------------------------------------------------------------------------------
def length_tenths(prompts, completions, **fields):
    return [len(c) / 10 for c in completions]


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "p=", "46", "47", "the", "answer", "is", "a", "b"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=0)
    path = tmp_path_factory.mktemp("tiny_rm")
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_reward_model_local_classifier_batched(task, tiny_rm):
    completions = [" 46", " the answer is 46", " 47 a b", " a"]
    batched = score(task, {"name": "reward_model", "path": str(tiny_rm), "batch_size": 3}, completions)
    single = score(task, {"name": "reward_model", "path": str(tiny_rm), "batch_size": 1}, completions)
    assert batched == pytest.approx(single, abs=1e-5)  # padding does not change a score
    assert len(set(round(v, 6) for v in batched)) > 1


def test_reward_model_python_target(task):
    got = score(task, {"name": "reward_model", "target": "test_rewards:length_tenths"}, ["46", "46 46"])
    assert got == pytest.approx([0.2, 0.5])


# ---- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, field", [
    ({"name": "soft_overlong", "max_len": 10}, "method.rewards[1].max_len"),
    ({"name": "soft_overlong", "max_length": -1}, "method.rewards[1].max_length"),
    ({"name": "soft_overlong", "max_length": 10, "cache_length": 20}, "method.rewards[1].cache_length"),
    ({"name": "cosine_length", "max_len": "long"}, "method.rewards[1].max_len"),
    ({"name": "tool_cost", "mode": "sac"}, "method.rewards[1].mode"),
    ({"name": "tool_cost", "smooth": 0}, "method.rewards[1].smooth"),
    ({"name": "format", "pattern": "("}, "method.rewards[1].pattern"),
    ({"name": "bleu", "smooth_method": "magic"}, "method.rewards[1].smooth_method"),
    ({"name": "reward_model"}, "method.rewards[1].path"),
    ({"name": "reward_model", "path": "/no/such/model"}, "method.rewards[1].path"),
    ({"name": "reward_model", "target": "no_such_module_xyz:fn"}, "method.rewards[1].target"),
    ({"name": "correctness", "weight": "heavy"}, "method.rewards[1].weight"),
    ({"name": "nope"}, "method.rewards[1].name"),
])
def test_bad_reward_specs_name_their_field(task, spec, field):
    with pytest.raises(ConfigError) as info:
        RewardSet([{"name": "correctness"}, spec], task)
    assert info.value.field == field
    assert "->" in str(info.value) and "\n" not in str(info.value)


def test_unknown_aggregation(task):
    with pytest.raises(ConfigError) as info:
        RewardSet([{"name": "correctness"}], task, aggregation="product")
    assert info.value.field == "method.reward_aggregation"
