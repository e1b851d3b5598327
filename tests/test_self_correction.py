"""The self-correction spine: SCoRe's metrics on hand-built outcomes, the stage-II bonus and the stage-I KL on hand
values, the two-attempt protocol and its warm start, the SFT baselines' example selection, config checks, and short
runs of SCoRe, the naive multi-turn RL baseline, STaR and Pair-SFT."""

from __future__ import annotations

import random

import mlflow
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg, load_bench
from workbench.config import base_config, cache_key, validate
from workbench.errors import ConfigError
from workbench.methods.group_rl.losses import grpo_loss
from workbench.methods.self_correction.correction_sft import correction_pairs, star_keep
from workbench.methods.self_correction.metrics import self_correction_metrics
from workbench.methods.self_correction.protocol import (Protocol, SelfCorrectionTask, WarmStart, corrupt, critique_text,
                                                        direction, for_method, parse_verdict)
from workbench.methods.self_correction.score import shaped_second_reward, turn_kl_coefficients, turn_rewards
from workbench.tasks.arithmetic import ArithmeticTask
from workbench.train import run


# ---- metrics -----------------------------------------------------------------------------------------------
def test_metrics_on_hand_built_outcomes():
    # 6 problems: c->c, c->i, i->c, i->c, i->i, c->c
    first = [1, 1, 0, 0, 0, 1]
    second = [1, 0, 1, 1, 0, 1]
    m = self_correction_metrics(first, second, edited=[0, 1, 1, 1, 0, 0])
    assert m["accuracy_t1"] == pytest.approx(3 / 6)
    assert m["accuracy_t2"] == pytest.approx(4 / 6)
    assert m["delta"] == pytest.approx(1 / 6)
    assert m["delta_i_to_c"] == pytest.approx(2 / 6)  # fractions of all problems, as in SCoRe's tables
    assert m["delta_c_to_i"] == pytest.approx(1 / 6)
    assert m["delta"] == pytest.approx(m["delta_i_to_c"] - m["delta_c_to_i"])
    assert m["edit_frac"] == pytest.approx(3 / 6)


def test_metrics_reproduce_the_papers_base_row_arithmetic():
    # SCoRe Table 2, base model: 4.6 % fixed, 15.8 % broken -> delta -11.2 (500 problems: 23 and 79)
    first = [0] * 23 + [1] * 79 + [1] * 184 + [0] * 214
    second = [1] * 23 + [0] * 79 + [1] * 184 + [0] * 214
    m = self_correction_metrics(first, second)
    assert (m["delta_i_to_c"], m["delta_c_to_i"]) == pytest.approx((0.046, 0.158))
    assert m["delta"] == pytest.approx(-0.112)


def test_metrics_refuse_mismatched_outcomes():
    with pytest.raises(ValueError):
        self_correction_metrics([1, 0], [1])


# ---- SCoRe's objective on hand values ---------------------------------------------------------------------
def test_shaped_bonus_on_hand_values():
    r1 = torch.tensor([0.0, 1.0, 0.0, 1.0])
    r2 = torch.tensor([1.0, 0.0, 0.0, 1.0])
    # fix: 1 + 10 * 1 = 11; break: 0 + 10 * (-1) = -10; unchanged: the plain reward
    assert shaped_second_reward(r1, r2, 10.0).tolist() == [11.0, -10.0, 0.0, 1.0]
    first, second = turn_rewards(r1, r2, stage=2, alpha=10.0)
    assert first.tolist() == r1.tolist() and second.tolist() == [11.0, -10.0, 0.0, 1.0]  # gamma = 0: own reward only


def test_stage_one_credits_only_the_second_attempt():
    r1, r2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    first, second = turn_rewards(r1, r2, stage=1, alpha=10.0)
    assert first is None and second.tolist() == [0.0, 1.0]  # no bonus in stage I
    assert turn_kl_coefficients(1, beta1=0.01, beta2=0.1) == pytest.approx((0.11, 0.01))
    assert turn_kl_coefficients(2, beta1=0.01, beta2=0.1) == pytest.approx((0.01, 0.01))


def test_stage_one_first_attempt_loss_is_the_strong_kl_alone():
    """Zero advantages on attempt 1: its loss is (beta1 + beta2) * the k3 KL, token mean per sequence, sequence mean."""
    logp = torch.log(torch.tensor([[0.5, 0.25, 1.0], [0.8, 1.0, 1.0]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 1.0], [0.4, 1.0, 1.0]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    coef, _ = turn_kl_coefficients(1, beta1=0.01, beta2=0.1)
    loss, stats = grpo_loss(logp, logp.detach(), torch.zeros(2), mask, ref_logprobs=ref, beta=coef, kl_kind="k3",
                            agg="seq_mean_token_mean")

    def k3(p, q):  # exp(log q - log p) - (log q - log p) - 1, samples of p
        r = q / p
        return r - torch.log(torch.tensor(r)).item() - 1

    seq1 = (k3(0.5, 0.25) + k3(0.25, 0.5)) / 2  # 0.5 - ln 0.5 - 1 = 0.19315, 2 - ln 2 - 1 = 0.30685
    seq2 = k3(0.8, 0.4)
    assert loss.item() == pytest.approx(0.11 * (seq1 + seq2) / 2, rel=1e-5)


# ---- protocol and warm start ------------------------------------------------------------------------------
def test_conversations_follow_the_protocol():
    p = Protocol(instruction="Fix it.", verdict_wrong="Wrong.")
    assert p.first("2+2=") == [{"role": "user", "content": "2+2="}]
    second = p.second("2+2=", " 5 ", p.verdict(False))
    assert second == [{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "5"},
                      {"role": "user", "content": "Wrong. Fix it."}]
    assert p.second("2+2=", "5")[-1]["content"] == "Fix it."  # no feedback: the instruction alone
    assert p.critique_prompt("2+2=", "5")[-1]["content"] == p.critique_instruction


def test_critique_texts_and_verdicts():
    assert parse_verdict(critique_text(True)) is True
    assert parse_verdict(critique_text(False, "high")) is False
    assert critique_text(False, "low") == "The answer is wrong, it is too low."
    assert parse_verdict("no idea") is None
    task = ArithmeticTask(train_size=10, val_size=2, test_size=2)
    assert direction(task, "12", "10") == "high" and direction(task, "7", "10") == "low"
    assert direction(task, "10", "10") is None and direction(task, "x", "10") is None


def test_corrupt_moves_the_last_number_and_stays_non_negative():
    rng = random.Random(0)
    for _ in range(200):
        wrong = corrupt("3+4=7 so 7", rng)
        assert wrong.startswith("3+4=7 so ") and wrong != "3+4=7 so 7"
        value = int(wrong.rsplit(" ", 1)[1])
        assert 0 <= value <= 17 and value != 7
    assert all(int(corrupt("0", rng)) > 0 for _ in range(50))


def _wrapped(feedback="none", **warm):
    task = ArithmeticTask(train_size=400, val_size=5, test_size=6)
    return task, SelfCorrectionTask(task, Protocol(feedback=feedback), WarmStart(**warm))


def test_warm_start_rows_and_held_out_problems():
    task, sc = _wrapped(first_error_prob=0.5, second_error_prob=0.5)
    assert len(sc.splits["validation"]) == 5 and len(sc.problems["test"]) == 6
    assert sc.splits["test"][0]["prompt"] == [{"role": "user", "content": task.split("test")[0]["prompt"]}]
    rows = sc.splits["train"]
    firsts = [r for r in rows if len(r["prompt"]) == 1]
    seconds = [r for r in rows if len(r["prompt"]) == 3]
    assert len(firsts) == len(seconds) == 400
    assert all(task.verify(r["target"], r["answer"]) for r in firsts)  # attempt-1 targets are the references
    wrong_first = sum(not task.verify(r["prompt"][1]["content"], r["answer"]) for r in seconds) / 400
    wrong_second = sum(not task.verify(r["target"], r["answer"]) for r in seconds) / 400
    assert 0.4 < wrong_first < 0.6 and 0.4 < wrong_second < 0.6
    # no feedback: the second target does not depend on whether the first was right (an independent re-attempt)
    right_after_wrong = [task.verify(r["target"], r["answer"]) for r in seconds if not task.verify(r["prompt"][1]["content"], r["answer"])]
    right_after_right = [task.verify(r["target"], r["answer"]) for r in seconds if task.verify(r["prompt"][1]["content"], r["answer"])]
    assert abs(sum(right_after_wrong) / len(right_after_wrong) - sum(right_after_right) / len(right_after_right)) < 0.15
    assert "There might be an error" in "".join(sc.corpus())  # the tokenizer learns the protocol's words


def test_warm_start_with_verdicts_keeps_correct_answers():
    task, sc = _wrapped(feedback="verdict")
    for r in sc.splits["train"]:
        if len(r["prompt"]) == 3 and r["prompt"][2]["content"].startswith("Your answer is correct"):
            assert r["target"] == r["prompt"][1]["content"]


def test_warm_start_critiques_are_noisy_at_the_configured_rate():
    task, sc = _wrapped(feedback="critique", verdict_noise=0.3)
    critiques = [r for r in sc.splits["train"] if r["prompt"][-1]["content"] == sc.protocol.critique_instruction]
    assert len(critiques) == 400
    wrong = sum(parse_verdict(r["target"]) != task.verify(r["prompt"][1]["content"], r["answer"]) for r in critiques) / 400
    assert 0.2 < wrong < 0.4


def test_other_families_play_the_task_itself():
    task = ArithmeticTask(train_size=10, val_size=2, test_size=2)
    assert for_method(task, OmegaConf.create({"family": "group_rl"})) is task


# ---- the SFT baselines' examples ------------------------------------------------------------------------------
def test_star_keeps_fixes_and_optionally_kept_answers():
    c1 = torch.tensor([0.0, 0.0, 1.0, 1.0])
    c2 = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert star_keep(c1, c2, include_correct=False).tolist() == [True, False, False, False]
    assert star_keep(c1, c2, include_correct=True).tolist() == [True, False, True, False]


def test_pair_sft_pairs_wrong_with_right_inside_each_problem():
    correct = torch.tensor([0.0, 1.0, 0.0, 1.0,   0.0, 0.0, 0.0, 0.0,   1.0, 0.0, 1.0, 1.0])
    assert correction_pairs(correct, 4, include_correct=False) == [(0, 1), (2, 3), (9, 8)]
    with_correct = correction_pairs(correct, 4, include_correct=True)
    assert (1, 3) in with_correct and (3, 1) in with_correct and (8, 10) in with_correct and (11, 8) in with_correct
    assert all(a != b for a, b in with_correct)


# ---- configs ---------------------------------------------------------------------------------------------------
def test_score_baselines_share_one_warm_start(tmp_path):
    keys = set()
    for method in ("score", "multi_turn_rl", "star_correction", "pair_sft"):
        cfg = compose_cfg([f"method={method}"], tmp_path / method)
        keys.add(cache_key(base_config(cfg)))
    assert len(keys) == 1


def test_warm_start_key_follows_the_protocol(tmp_path):
    a = compose_cfg(["method=score"], tmp_path / "a")
    b = compose_cfg(["method=score", "method.protocol.instruction=Try again."], tmp_path / "b")
    assert cache_key(base_config(a)) != cache_key(base_config(b))


@pytest.mark.parametrize("overrides,field", [
    (["method=score", "task=gridworld"], "method"),  # the environment asks for a multi-turn method
    (["method=score", "task=synthetic_preference"], "task"),
    (["method=score", "method.protocol.feedback=hint"], "method.protocol.feedback"),
    (["method=score", "+method.protocol.tone=kind"], "method.protocol.tone"),
    (["method=score", "method.alpha=-1"], "method.alpha"),
    (["method=score", "method.stage1_steps=1.5"], "method.stage1_steps"),
    (["method=score", "method.base.two_attempt.first_error_prob=2"], "method.base.two_attempt.first_error_prob"),
    (["method=star_correction", "method.data=dagger"], "method.data"),
])
def test_bad_self_correction_config_names_the_field(tmp_path, overrides, field):
    cfg = compose_cfg(overrides, tmp_path / "run")
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert e.value.field == field


# ---- short runs --------------------------------------------------------------------------------------------------
def _metrics(cfg, summary) -> dict:
    return mlflow.MlflowClient(cfg.logger.tracking_uri).get_run(summary["mlflow_run_id"]).data.metrics


def test_score_runs_both_stages_and_logs_the_metrics(fast_cfg):
    cfg = fast_cfg("score", ["method.stage1_steps=2"])
    summary = run(cfg)
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    stages = [m.value for m in sorted(client.get_metric_history(summary["mlflow_run_id"], "train/stage"), key=lambda m: m.step)]
    assert stages == [1.0, 1.0, 2.0, 2.0]
    metrics = _metrics(cfg, summary)
    for key in ("accuracy_t1", "accuracy_t2", "delta", "delta_i_to_c", "delta_c_to_i", "edit_frac"):
        assert f"test/{key}" in metrics and f"test_before/{key}" in metrics and f"val/{key}" in metrics
    assert metrics["test/delta"] == pytest.approx(metrics["test/delta_i_to_c"] - metrics["test/delta_c_to_i"])
    assert metrics["test/accuracy"] == metrics["test/accuracy_t2"]
    for key in ("train/turn1/kl", "train/turn2/kl", "train/turn2/loss", "train/shaped_reward_t2", "train/reward_t1"):
        assert key in metrics, key


def test_naive_baseline_trains_the_second_attempt_only(fast_cfg):
    cfg = fast_cfg("multi_turn_rl")
    metrics = _metrics(cfg, run(cfg))
    assert "train/turn2/loss" in metrics and "train/turn1/loss" not in metrics


@pytest.mark.parametrize("method", ["star_correction", "pair_sft"])
def test_sft_baselines_run(fast_cfg, method):
    # a warm start that solves some single-digit sums, so there are fixes and correct samples to imitate
    cfg = fast_cfg(method, ["method.group_size=8", "trainer.max_steps=3", "task.max_value=9", "task.train_size=60",
                            "method.base.max_steps=200", "method.base.batch_size=32", "model.hidden_size=64"])
    summary = run(cfg)
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    examples = [m.value for m in client.get_metric_history(summary["mlflow_run_id"], "train/examples")]
    assert summary["metrics"]["steps"] == 3 and sum(examples) > 0, examples
    assert "test/delta" in _metrics(cfg, summary) and "train/loss" in _metrics(cfg, summary)


def test_sft_baseline_rounds_without_examples_count_but_move_nothing(fast_cfg):
    # a 3-step warm start answers nothing right: no fix to imitate, no correct sample to pair with
    cfg = fast_cfg("pair_sft")
    summary = run(cfg)
    metrics = _metrics(cfg, summary)
    assert summary["metrics"]["steps"] == 4 and metrics["train/examples"] == 0
    for key in ("accuracy_t1", "accuracy_t2", "edit_frac"):  # same weights, same greedy answers
        assert metrics[f"test/{key}"] == metrics[f"test_before/{key}"]


def test_bench_study_tells_apart_two_arms_of_one_method(tmp_path):
    """critique_rl_balance runs critique_rl twice (the second with balance_classes=true): each job gets its own run
    directory, and each run lands in the arm whose overrides its logged params match (the most specific one)."""
    import sys

    bench = load_bench("self_correction")
    study_jobs = sys.modules["jobs"].study_jobs  # bench/jobs.py, loaded by the script
    _, arms, _ = bench.STUDIES["critique_rl_balance"]
    names = [name for name, _ in study_jobs(arms, [0, 1], [])]
    assert names == ["critique_rl-arithmetic-a0-s0", "critique_rl-arithmetic-a0-s1",
                     "critique_rl-arithmetic-a1-s0", "critique_rl-arithmetic-a1-s1"]
    # a study whose arms are all different methods keeps its plain names
    assert study_jobs(bench.STUDIES["critique"][1], [0], [])[0][0] == "critique_grpo-arithmetic-s0"

    base = {"task.max_value": "49", "task.train_size": "1500", "task.test_size": "300"}
    metrics = dict.fromkeys(bench.KEYS, 0.5)

    def run(seed, balance, t2):
        return {"method": "critique_rl", "task": "arithmetic", "seed": seed, "before": metrics,
                "after": dict(metrics, accuracy_t2=t2), "wall": 1.0, "steps": 120, "curve": [(0, 0.0)],
                "params": dict(base, **{"method.balance_classes": balance})}

    rows = [run(0, "False", 0.61), run(0, "True", 0.72), run(1, "True", 0.73)]
    assert [bench.arm_of(r, arms) for r in rows] == [0, 1, 1]
    assert bench.arm_of(dict(rows[0], params=dict(base, **{"task.max_value": "99"})), arms) is None  # other setting
    report = bench.write_report("critique_rl_balance", rows, [], tmp_path / "r.md")
    paper, balanced = arms[0][0], arms[1][0]
    assert f"| {paper} | 0 | 0.500 → 0.500 | 0.500 → 0.610 |" in report
    assert f"| {balanced} | 1 | 0.500 → 0.500 | 0.500 → 0.730 |" in report
    assert f"| {balanced} | 2 | 0.500 ± 0.000 | 0.725 ± 0.007 |" in report  # the mean over its two seeds
    assert f"| {paper} | 1 | 0.500 | 0.610 |" in report


def test_every_bench_study_arm_composes_and_validates(tmp_path):
    """bench/self_correction.py's studies pass per-arm overrides (e.g. refinement_turn_coef, balance_classes): each arm's
    job config composes and passes `validate` (which runs the method's own checks), so a renamed key fails here, not
    30 minutes into a study."""
    arms = [arm for _, study_arms, _ in load_bench("self_correction").STUDIES.values() for arm in study_arms]
    assert {"refinement_turn_coef", "balance_classes"} <= {o.split("=")[0].split(".")[-1] for *_, extra in arms for o in extra}
    for label, method, task, extra in arms:
        cfg = compose_cfg([f"method={method}", f"task={task}", *extra], tmp_path / method)
        validate(cfg)
        for override in extra:
            key, value = override.split("=", 1)
            assert str(OmegaConf.select(cfg, key)).lower() == value.lower(), (label, override)
