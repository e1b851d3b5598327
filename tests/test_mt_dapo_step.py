"""Step-level DAPO: the quadratic loss and the step advantages on hand values, Monte-Carlo value targets on a
deterministic env, and a tiny gridworld run (D and the critic phase, the policy phase, checkpointed D)."""

from __future__ import annotations

import math

import mlflow
import pytest
import torch
from omegaconf import OmegaConf

from workbench import ROOT
from workbench.errors import ConfigError
from workbench.methods.multi_turn.dapo_step import (DATA_KEY, dapo_loss, mc_value_targets, step_advantages, trim,
                                                    validate_dapo_step)
from workbench.methods.multi_turn.rollout import run_episodes
from workbench.policy.sampler import Rollout
from workbench.tasks.envs.base import StepResult, TextEnv
from workbench.train import run


def test_dapo_loss_on_hand_values():
    logprobs = torch.tensor([-1.0, -2.0], requires_grad=True)
    ref = torch.tensor([-1.5, -1.0])
    adv = torch.tensor([0.2, -0.3])
    loss, stats = dapo_loss(logprobs, ref, adv, beta=0.5)
    # log-ratios 0.5, -1.0; beta * ratio 0.25, -0.5; residuals 0.05, -0.2; mean of squares (0.0025 + 0.04) / 2
    assert math.isclose(float(loss), 0.02125, rel_tol=1e-6)
    assert math.isclose(float(stats["log_ratio"]), -0.25, rel_tol=1e-6)
    assert math.isclose(float(stats["log_ratio_abs"]), 0.75, rel_tol=1e-6)
    loss.backward()
    # d/d logprob_i = 2 * beta * residual_i / B
    assert torch.allclose(logprobs.grad, torch.tensor([0.025, -0.1]))


def test_dapo_loss_is_zero_at_the_target_ratio():
    adv = torch.tensor([0.3, -0.1, 0.0])
    ref = torch.tensor([-2.0, -0.5, -1.0])
    loss, _ = dapo_loss(ref + adv / 0.25, ref, adv, beta=0.25)  # log pi / pi_ref = A / beta
    assert float(loss) < 1e-12


def test_step_advantages_with_terminal_outcomes():
    # episode 0: three turns, succeeds; episode 1: two turns, ends without success (e.g. truncated)
    values = torch.tensor([0.5, 0.6, 0.9, 0.4, 0.2])
    dones = torch.tensor([False, False, True, False, True])
    success = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])
    next_row = torch.tensor([1, 2, -1, 4, -1])
    adv = step_advantages(values, dones, success, next_row)
    # V(s') - V(s); after the last action V(s') is the outcome: 1 - 0.9 and 0 - 0.2
    assert torch.allclose(adv, torch.tensor([0.1, 0.3, 0.1, -0.2, -0.2]))
    # the advantages of an episode telescope to outcome - V(s_0)
    assert math.isclose(float(adv[:3].sum()), 1.0 - 0.5, abs_tol=1e-6)
    with pytest.raises(ValueError, match="not marked done"):
        step_advantages(values, torch.tensor([False, False, False, False, True]), success, next_row)


class Climb(TextEnv):
    """Deterministic: x starts at 0, 'up' adds 1, anything else stays; success at x = 2, at most 3 turns."""

    max_turns = 3

    def _reset(self, rng):
        self.x = 0
        return "x=0"

    def _step(self, action):
        self.x += action == "up"
        if self.x == 2:
            return StepResult("goal", 1.0, True, {"success": True})
        return StepResult(f"x={self.x}", 0.0, False)


def always_up(texts, prefixes):
    n = len(texts)
    one = torch.ones(n, 1, dtype=torch.long)
    return Rollout(one, one, one, one, ["up"] * n, torch.zeros(n, dtype=torch.bool))


def play_up(envs):
    return run_episodes(envs, list(range(len(envs))), str, always_up, pad_id=0).success


@pytest.mark.parametrize("chunk", [None, 1])
def test_mc_value_targets_on_a_deterministic_env(chunk):
    env = Climb()
    env.reset(0)
    states = []
    for action in ["stay", "stay", "up"]:  # the saved episode wastes two turns and fails
        states.append(env.clone())
        env.step(action)
    assert env.done and not env.succeeded
    own = torch.zeros(3)
    targets = mc_value_targets(states, own, play_up, k=2, chunk=chunk)
    # from x=0 with 3 or 2 turns left, 'up' 'up' reaches the goal; with 1 turn left it cannot: the same
    # observation, different values (the env copy carries the turn count). Targets: (own + 2 rollouts) / 3.
    assert torch.allclose(targets, torch.tensor([2 / 3, 2 / 3, 0.0]))
    assert [s.turn for s in states] == [0, 1, 2] and not any(s.done for s in states), "rollouts ran on copies"
    assert torch.equal(mc_value_targets(states, torch.tensor([1.0, 0.0, 1.0]), play_up, k=0), torch.tensor([1.0, 0.0, 1.0]))


def test_trim_drops_shared_padding():
    ids = torch.tensor([[0, 0, 5, 6], [0, 7, 8, 9]])
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    left_ids, left_mask = trim(ids, mask, left=True)
    assert left_ids.tolist() == [[0, 5, 6], [7, 8, 9]] and left_mask.tolist() == [[0, 1, 1], [1, 1, 1]]
    right_ids, _ = trim(torch.tensor([[4, 0, 0], [4, 5, 0]]), torch.tensor([[1, 0, 0], [1, 1, 0]]), left=False)
    assert right_ids.tolist() == [[4, 0], [4, 5]]


FAST_DAPO = ["task=gridworld", "method.dataset_instances=3", "method.group_size=2", "method.mc_rollouts=1",
             "method.critic_steps=3", "method.critic_batch_size=8", "method.batch_size=8"]


def _history(cfg, run_id: str, key: str) -> list[float]:
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_dapo_step_fast_run(fast_cfg, tmp_path):
    """Two rounds (iterative DAPO, refresh every 2 steps) of D + critic phase, each followed by policy steps."""
    cfg = fast_cfg("dapo_step", [*FAST_DAPO, "method.refresh_every=2"])
    summary = run(cfg)
    metrics = summary["metrics"]
    assert 0.0 <= metrics["test/success_rate"] <= 1.0 and "test_before/success_rate" in metrics
    rid = summary["mlflow_run_id"]
    assert _history(cfg, rid, "train/data_age") == [0.0, 1.0, 0.0, 1.0]
    assert len(_history(cfg, rid, "train/critic_loss")) == 6  # two rounds of three critic updates
    assert len(_history(cfg, rid, "train/critic_loss_final")) == 2
    for key in ("train/dapo_loss", "train/advantage_mean", "train/advantage_abs", "train/log_ratio"):
        assert len(_history(cfg, rid, key)) == 4, key
    # each round's first policy step starts at pi = pi_ref: D's log-probs were taken from this very policy
    log_ratio = _history(cfg, rid, "train/log_ratio")
    assert abs(log_ratio[0]) < 1e-5 and abs(log_ratio[2]) < 1e-5
    ckpt = sorted((tmp_path / "run" / "checkpoints").glob("*.ckpt"))[-1]
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    data = saved[DATA_KEY]["data"]
    n = len(data["advantages"])
    assert n == _history(cfg, rid, "train/data_rows")[-1] and data["prompt_ids"].shape[0] == n
    assert ((data["value_targets"] >= 0) & (data["value_targets"] <= 1)).all()
    assert saved[DATA_KEY]["critic_updates"] == 6
    assert any(k.startswith("critic.") for k in saved["state_dict"])


@pytest.mark.parametrize("key, value", [
    ("critic_loss", "huber"), ("advantage_values", "returns"), ("beta", 0), ("beta", "big"), ("critic_lr", -1.0),
    ("mc_rollouts", -1), ("refresh_every", 1.5), ("dataset_instances", 0), ("critic_steps", True),
])
def test_bad_dapo_step_fields(key, value):
    method = OmegaConf.load(ROOT / "conf" / "method" / "dapo_step.yaml")
    validate_dapo_step(method)  # the shipped defaults pass
    method[key] = value
    with pytest.raises(ConfigError, match=f"method.{key}"):
        validate_dapo_step(method)
    method = OmegaConf.load(ROOT / "conf" / "method" / "dapo_step.yaml")
    method.advantage_values, method.mc_rollouts = "mc", 0  # every V(s) would be the episode's own outcome
    with pytest.raises(ConfigError, match="method.advantage_values"):
        validate_dapo_step(method)


def test_bad_dapo_step_field_stops_a_run(fast_cfg):
    with pytest.raises(ConfigError, match="method.critic_loss"):
        run(fast_cfg("dapo_step", [*FAST_DAPO, "method.critic_loss=huber"]))


def test_dapo_step_single_turn_task(fast_cfg):
    """A single-turn task is a one-turn env: one row per episode, A = success - V(prompt)."""
    cfg = fast_cfg("dapo_step", [*FAST_DAPO, "task=arithmetic"])
    summary = run(cfg)
    assert "test/success_rate" in summary["metrics"]
    assert _history(cfg, summary["mlflow_run_id"], "train/data_rows") == [3 * 2]  # instances x episodes, one turn each
