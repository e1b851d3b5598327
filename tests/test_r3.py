"""R³ reverse curriculum: demonstration steps, the start-state schedule (hand values), prefixed prompts with the
reward on prefix + completion, the config check, and short real runs of both curricula."""

from __future__ import annotations

import mlflow
import pytest
from omegaconf import open_dict
import torch

from workbench.errors import ConfigError
from workbench.methods.group_rl.reverse_curriculum import (
    ReverseCurriculumModule, demonstration_steps, prefixed_prompts, stage_of, start_step, validate_r3,
)
from workbench.policy.models import build_tiny
from workbench.policy.sampler import Rollout, encode_prompts, right_pad
from workbench.tasks import build_task
from workbench.train import run

GSM8K_LIKE = " Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether.\n#### 72"


# ---- demonstration steps ------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [
    GSM8K_LIKE, GSM8K_LIKE + "\n", "a\n\nb\n", "95", "5", "-12", "198", " 3*7+25", " 25-(3*7)", " 3 * 7 ", "3.5",
    "", "x", "\r\nab\n", " -3+4",
])
def test_steps_join_back_to_the_target(target):
    steps = demonstration_steps(target)
    assert "".join(steps) == target
    assert all(steps)  # no empty step: an empty step would be a start state equal to its neighbour


def test_multi_line_targets_split_into_lines():
    assert demonstration_steps(GSM8K_LIKE) == [
        " Natalia sold 48/2 = 24 clips in May.\n", "Natalia sold 48+24 = 72 clips altogether.\n", "#### 72"]
    # a blank line is no step of its own: it stays with the line before it
    assert demonstration_steps("a\n\nb\n") == ["a\n\n", "b\n"]


def test_single_line_targets_split_at_operators_then_digits():
    assert demonstration_steps(" 3*7+25") == [" 3", "*7", "+25"]  # countdown: one step per operator term
    assert demonstration_steps(" 25-(3*7)") == [" 25", "-(3", "*7)"]
    assert demonstration_steps(" -3+4") == [" -3", "+4"]  # a leading sign stays with its operand
    assert demonstration_steps("95") == ["9", "5"]  # arithmetic: a bare number, one step per digit
    assert demonstration_steps("198") == ["1", "9", "8"]
    assert demonstration_steps("-12") == ["-1", "2"]  # the sign goes with the first digit
    assert demonstration_steps("5") == ["5"]  # nothing to split: the full problem is the only start state
    assert demonstration_steps("") == []


# ---- the schedule -------------------------------------------------------------------------------------
def test_stage_of_splits_the_run_into_equal_stages():
    # S = 4 stages over T = 100 steps: 0-24 -> 1, 25-49 -> 2, 50-74 -> 3, 75-99 -> 4
    assert [stage_of(t, 4, 100) for t in (0, 24, 25, 49, 50, 74, 75, 99)] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert [stage_of(t, 3, 10) for t in range(10)] == [1, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # floor(3t/10) + 1
    assert stage_of(5, 1, 10) == 1


@pytest.mark.parametrize("L,expected", [
    (6, [5, 4, 3, 0]),  # k = L - s, then the full problem in the last stage
    (3, [2, 1, 0, 0]),  # k = L - s reaches 0 by stage 3
    (2, [1, 0, 0, 0]),  # clamped at 0
    (1, [0, 0, 0, 0]),
    (0, [0, 0, 0, 0]),
])
def test_staged_start_step_by_hand(L, expected):
    steps_in_each_stage = [0, 30, 60, 99]  # stages 1, 2, 3, 4 of S = 4 over T = 100
    assert [start_step("staged", L, t, 4, 100) for t in steps_in_each_stage] == expected


def test_staged_with_one_stage_is_plain_grpo():
    assert all(start_step("staged", 5, t, 1, 100) == 0 for t in range(100))


def test_mix_draws_every_start_state_but_the_end_uniformly():
    gen = torch.Generator().manual_seed(0)
    draws = torch.tensor([start_step("mix", 3, generator=gen) for _ in range(3000)])
    assert set(draws.tolist()) == {0, 1, 2}  # never k = L (nothing left to write)
    freq = torch.bincount(draws, minlength=3).float() / len(draws)
    assert torch.allclose(freq, torch.full((3,), 1 / 3), atol=0.04), freq
    assert {start_step("mix", 1, generator=gen) for _ in range(20)} == {0}
    assert start_step("mix", 0, generator=gen) == 0


def test_unknown_curriculum_is_rejected():
    with pytest.raises(ValueError):
        start_step("forward", 3)


# ---- prefixed prompts and rewards --------------------------------------------------------------------
def test_prefixed_prompts_by_hand():
    texts, prefixes = prefixed_prompts(["37+58=", "Q: x\nA:"], ["95", GSM8K_LIKE], [1, 2])
    assert prefixes == ["9", " Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether.\n"]
    assert texts == ["37+58=9", "Q: x\nA:" + prefixes[1]]
    assert prefixed_prompts(["1+2="], ["3"], [0]) == (["1+2="], [""])


@pytest.fixture
def module(fast_cfg):
    def make(extra: list[str]):
        cfg = fast_cfg("r3", extra)
        task = build_task(cfg.task)
        policy = build_tiny(cfg.model, task.corpus())
        return ReverseCurriculumModule(policy, task, cfg.method, cfg.trainer)

    return make


class ScriptedGenerator:
    """Returns fixed completion texts (cycled) and records the prompts it was asked to continue."""

    def __init__(self, texts: list[str]):
        self.texts, self.prompts = texts, []

    def __call__(self, model, tokenizer, prompts, n=1, **_):
        self.prompts.extend(prompts)
        ids, mask = encode_prompts(tokenizer, [p for p in prompts for _ in range(n)], "cpu")
        texts = [self.texts[i % len(self.texts)] for i in range(len(prompts) * n)]
        comp = [tokenizer(t + tokenizer.eos_token, add_special_tokens=False)["input_ids"] for t in texts]
        comp_ids, comp_mask = right_pad(comp, tokenizer.pad_token_id, "cpu")
        return Rollout(ids, mask, comp_ids, comp_mask, texts, torch.zeros(len(texts), dtype=torch.bool))

    def sync(self, model):
        pass


def test_reward_is_on_prefix_plus_completion(module):
    # staged, stage 1 at step 0: k = L - 1, so '95' starts from '9' and the policy writes the last digit
    m = module(["method.curriculum=staged", "method.num_stages=3", "method.group_size=4"])
    m.generator = ScriptedGenerator(["5", "95", "6", "5 "])
    batch = {"prompt": ["37+58="], "target": ["95"], "answer": ["95"]}
    data = m._score(batch)
    assert m.generator.prompts == [m.formatted(["37+58="])[0] + "9"]
    # '9'+'5' = 95 right; '9'+'95' = 995 wrong (a completion that repeats the prefix is wrong); '96' wrong; '95 ' right
    assert data.rewards.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert data.correct.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert data.fields["prompt"] == ["37+58="] * 4  # rewards and logs see the task prompt, not the prefixed one
    assert m._start_stats["start_step"] == 1.0 and m._start_stats["full_problem_frac"] == 0.0


def test_full_problem_start_is_grpo_scoring(module):
    m = module(["method.curriculum=staged", "method.num_stages=1", "method.group_size=2"])
    m.generator = ScriptedGenerator(["95", "9"])
    data = m._score({"prompt": ["37+58="], "target": ["95"], "answer": ["95"]})
    assert m.generator.prompts == m.formatted(["37+58="])
    assert data.rewards.tolist() == [1.0, 0.0]
    assert m._start_stats["accuracy_full_problem"] == 0.5


def test_length_rewards_count_the_prefix_tokens(module):
    # length reward (coef 1, max_length 10): r = min(L, 10) / 10 with L = prefix tokens + sampled tokens (EOS included)
    m = module(["method.curriculum=staged", "method.num_stages=3", "method.group_size=2",
                "method.rewards=[{name: length, weight: 1.0, coef: 1.0, max_length: 10}]"])
    m.generator = ScriptedGenerator(["8", "8"])
    data = m._score({"prompt": ["1+197="], "target": ["198"], "answer": ["198"]})  # L = 3 steps, stage 1: k = 2, prefix '19'
    assert m.generator.prompts == [m.formatted(["1+197="])[0] + "19"]
    # prefix '19' = 2 tokens (digits are single tokens), completion '8' + EOS = 2 tokens -> 4 / 10
    assert data.rewards.tolist() == pytest.approx([0.4, 0.4])
    assert data.correct.tolist() == [1.0, 1.0]


def test_start_state_stats_cover_every_sampling_round_of_a_step(module):
    """Dynamic sampling scores several batches in one step; the logged start states cover all of them."""
    m = module(["method.curriculum=staged", "method.num_stages=3", "method.group_size=2"])
    m.generator = ScriptedGenerator(["5", "7"])
    m._score({"prompt": ["37+58="], "target": ["95"], "answer": ["95"]})  # k = 1: '95' right, '97' wrong
    m._score({"prompt": ["2+3="], "target": ["5"], "answer": ["5"]})  # L = 1 so k = 0: '5' right, '7' wrong
    assert m._start_stats == pytest.approx({"start_step": 0.5, "start_frac_of_demo": (1 / 2 + 0 / 1) / 2,
                                            "full_problem_frac": 0.5, "accuracy_full_problem": 0.5, "stage": 1.0})


def test_sampled_rollout_trains_only_on_tokens_after_the_prefix(module):
    """The prefix is part of the prompt ids; the completion mask covers only what the policy sampled."""
    m = module(["method.curriculum=staged", "method.num_stages=3", "method.group_size=2"])
    data = m._score({"prompt": ["37+58="], "target": ["95"], "answer": ["95"]})
    tok = m.tokenizer
    prompt = tok(m.formatted(["37+58="])[0], add_special_tokens=False)["input_ids"]
    prefix = tok("9", add_special_tokens=False)["input_ids"]
    for row in range(2):
        ids = data.rollout.prompt_ids[row][data.rollout.prompt_mask[row].bool()].tolist()
        # the prefixed prompt tokenizes as prompt tokens + target tokens, the layout SFT trained on
        assert ids == prompt + prefix
    assert data.rollout.completion_mask.sum().item() == data.rollout.lengths.sum().item() > 0


def test_mix_start_states_leave_the_global_rng_alone(module):
    m = module(["method.curriculum=mix"])
    state = torch.get_rng_state()
    ks = m.start_steps(["95", "198", "5", GSM8K_LIKE] * 8)
    assert torch.equal(state, torch.get_rng_state())
    assert all(0 <= k < len(demonstration_steps(t)) or k == 0 for k, t in zip(ks, ["95", "198", "5", GSM8K_LIKE] * 8))
    assert any(k > 0 for k in ks)


# ---- config check --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields,bad", [
    ({"curriculum": "forward", "num_stages": 3}, "method.curriculum"),
    ({"num_stages": 3}, "method.curriculum"),
    ({"curriculum": "staged", "num_stages": 0}, "method.num_stages"),
    ({"curriculum": "staged", "num_stages": 2.5}, "method.num_stages"),
    ({"curriculum": "mix", "num_stages": True}, "method.num_stages"),
])
def test_validate_r3_names_the_field(fields, bad):
    with pytest.raises(ConfigError) as err:
        validate_r3(fields)
    assert err.value.field == bad


def test_validate_r3_accepts_the_shipped_config(fast_cfg):
    method = fast_cfg("r3").method
    validate_r3(method)  # would raise on any field it refuses
    assert method.curriculum == "mix" and method.num_stages >= 1
    with open_dict(method):
        method.num_stages = 0  # the same config one step off is refused
    with pytest.raises(ConfigError) as err:
        validate_r3(method)
    assert err.value.field == "method.num_stages"


# ---- real runs -----------------------------------------------------------------------------------------
def _history(cfg, run_id: str, key: str) -> list[float]:
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_staged_run_moves_the_start_back_to_the_full_problem(fast_cfg):
    cfg = fast_cfg("r3", ["method.curriculum=staged", "method.num_stages=2", "method.group_size=2"])
    summary = run(cfg)
    assert summary["metrics"]["steps"] == 4
    run_id = summary["mlflow_run_id"]
    metrics = mlflow.MlflowClient(cfg.logger.tracking_uri).get_run(run_id).data.metrics
    for key in ("test_before/accuracy", "test/accuracy", "train/reward", "train/loss", "train/r3/start_step"):
        assert key in metrics, key
    assert _history(cfg, run_id, "train/r3/stage") == [1.0, 1.0, 2.0, 2.0]  # T = 4 steps, S = 2 stages
    start = _history(cfg, run_id, "train/r3/start_step")
    assert start[0] > 0 and start[1] > 0 and start[2:] == [0.0, 0.0]
    assert _history(cfg, run_id, "train/r3/full_problem_frac")[2:] == [1.0, 1.0]


def test_mix_run_finishes(fast_cfg):
    cfg = fast_cfg("r3", ["method.group_size=2"])
    summary = run(cfg)
    assert summary["metrics"]["steps"] == 4
    start = _history(cfg, summary["mlflow_run_id"], "train/r3/start_frac_of_demo")
    assert len(start) == 4 and all(0.0 <= s < 1.0 for s in start)
