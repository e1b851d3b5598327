"""VinePPO: step advantages on hand-built trajectories, exact MC values from a deterministic env and policy, and
short real runs (multi-turn gridworld with turn steps, single-turn arithmetic with token steps)."""

from __future__ import annotations

import math

import mlflow
import pytest
import torch
from omegaconf import OmegaConf

from workbench.errors import ConfigError
from workbench.methods.multi_turn.credit import gae
from workbench.methods.multi_turn.rollout import run_episodes
from workbench.methods.multi_turn.vineppo import (
    check_config,
    masked_whiten,
    mc_state_values,
    spread_to_tokens,
    VineModule,
    state_key,
    vine_step_advantages,
    vine_steps,
)
from workbench.policy.sampler import Rollout
from workbench.tasks.envs.base import StepResult, TextEnv
from workbench.train import run


def close(a: torch.Tensor, b: list[float]) -> bool:
    return torch.allclose(a.float(), torch.tensor(b, dtype=torch.float32), atol=1e-6)


# ---- step layout and advantages on hand-built trajectories -------------------------------------------------
# Two episodes: episode 0 has two turns (actions of 2 and 1 tokens, rewards 0 then 1), episode 1 one turn
# (3 tokens, reward -0.5). Completion width 3.
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
TURN_REWARDS = torch.tensor([0.0, 1.0, -0.5])
EPISODE = torch.tensor([0, 0, 1])


def test_turn_steps_and_advantages_by_hand():
    steps = vine_steps(MASK, TURN_REWARDS, EPISODE, "turn", gamma=0.9)
    assert steps.row.tolist() == [0, 1, 2] and steps.prefix_len.tolist() == [0, 0, 0]
    assert steps.episode_end.tolist() == [False, True, True] and steps.index.tolist() == [0, 1, 0]
    assert close(steps.rewards, [0.0, 1.0, -0.5]) and close(steps.discounts, [0.9, 0.9, 0.9])
    values = torch.tensor([0.6, 0.8, 0.2])  # V(s_0), V(s_1) of episode 0; V(s_0) of episode 1
    adv, used = vine_step_advantages(values, steps.rewards, steps.episode_end, steps.discounts)
    # A_0 = 0 + 0.9 * 0.8 - 0.6 = 0.12; A_1 = 1 + 0 - 0.8 = 0.2 (terminal V = 0); A_0' = -0.5 - 0.2 = -0.7
    assert close(adv, [0.12, 0.2, -0.7]) and close(used, [0.6, 0.8, 0.2])
    tokens = spread_to_tokens(adv, steps, MASK, "turn")
    assert close(tokens, [[0.12, 0.12, 0.0], [0.2, 0.0, 0.0], [-0.7, -0.7, -0.7]])
    # one-step advantages are GAE with lambda 0 (a cross-check with the family's credit function)
    ref, _ = gae(steps.rewards, values, steps.discounts, 0.0, steps.episode_end)
    assert torch.allclose(adv, ref)


def test_token_steps_and_advantages_by_hand():
    steps = vine_steps(MASK, TURN_REWARDS, EPISODE, "token", gamma=0.9)
    assert steps.row.tolist() == [0, 0, 1, 2, 2, 2] and steps.prefix_len.tolist() == [0, 1, 0, 0, 1, 2]
    assert steps.episode_end.tolist() == [False, False, True, False, False, True]
    assert steps.index.tolist() == [0, 1, 2, 0, 1, 2]
    # rewards only where an action ends; discount only at an action's end (it counts turns, not tokens)
    assert close(steps.rewards, [0.0, 0.0, 1.0, 0.0, 0.0, -0.5])
    assert close(steps.discounts, [1.0, 0.9, 0.9, 1.0, 1.0, 0.9])
    values = torch.tensor([0.5, 0.4, 0.8, 0.1, 0.3, 0.0])
    adv, _ = vine_step_advantages(values, steps.rewards, steps.episode_end, steps.discounts)
    # 0.4 - 0.5; 0.9 * 0.8 - 0.4; 1 - 0.8; 0.3 - 0.1; 0.0 - 0.3; -0.5 - 0.0
    assert close(adv, [-0.1, 0.32, 0.2, 0.2, -0.3, -0.5])
    tokens = spread_to_tokens(adv, steps, MASK, "token")
    assert close(tokens, [[-0.1, 0.32, 0.0], [0.2, 0.0, 0.0], [0.2, -0.3, -0.5]])


def test_missing_values_are_filled_from_the_end_like_the_official_code():
    """Past max_step_for_value_estimation: V(s_t) = r_t + gamma_t V(s_{t+1}) from the end, so A = 0 there."""
    values = torch.tensor([0.5, 0.7, float("nan"), float("nan")])
    rewards = torch.tensor([0.0, 0.0, 0.0, 1.0])
    end = torch.tensor([False, False, False, True])
    adv, used = vine_step_advantages(values, rewards, end)
    assert close(used, [0.5, 0.7, 1.0, 1.0]) and close(adv, [0.2, 0.3, 0.0, 0.0])


def test_whitening_uses_action_tokens_only():
    x = torch.tensor([[1.0, 3.0, 99.0], [5.0, 0.0, 0.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    w = masked_whiten(x, m)  # mean 3, unbiased var 4 -> (x - 3) / 2 on the mask
    assert torch.allclose(w, torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), atol=1e-6)


def test_unknown_step_split_raises():
    with pytest.raises(ValueError, match="step_split"):
        vine_steps(MASK, TURN_REWARDS, EPISODE, "sentence")


# ---- MC values: a deterministic env and policy, so the means are exact ------------------------------------
class Bits(TextEnv):
    """Two turns; each action is two characters of '0' / '1'; a turn's reward is its number of '1's."""

    max_turns = 2

    def _reset(self, rng):
        return "go"

    def _step(self, action):
        return StepResult(f"turn {self.turn + 1}", float(action.count("1")), self.turn + 1 >= 2, {"success": True})


def fake_generate(texts, prefixes):
    """Action chars by batch position: even rows play '1' at position 0, odd rows '0'; position 1 is always '0'.
    A prefix (token ids = character codes) is kept and continued. So of K = 2 copies of a state (laid out K per
    state), copy 0 plays "10" and copy 1 plays "00" wherever the prefix leaves them the choice."""
    actions = []
    for i in range(len(texts)):
        chars = [chr(c) for c in (prefixes[i] if prefixes is not None else [])]
        while len(chars) < 2:
            chars.append(("1" if i % 2 == 0 else "0") if len(chars) == 0 else "0")
        actions.append("".join(chars))
    B = len(actions)
    ids = torch.tensor([[ord(c) for c in a] for a in actions])
    return Rollout(torch.zeros(B, 1, dtype=torch.long), torch.ones(B, 1, dtype=torch.long), ids,
                   torch.ones_like(ids), actions, torch.zeros(B, dtype=torch.bool))


def fake_play(calls):
    def play(envs, prefixes):
        calls.append((len(envs), prefixes))
        return run_episodes(envs, list(range(len(envs))), str, fake_generate, pad_id=0, prefixes=prefixes)

    return play


def test_mc_values_are_exact_means_of_the_return_to_go():
    env = Bits()
    env.reset(0)
    after_one = env.clone()
    after_one.step("11")  # reward 2 already collected: must not count in V of later states
    states = [env, env, after_one, after_one]
    prefixes = [[], [ord("1")], [], [ord("0")]]
    calls = []
    values, n = mc_state_values(states, prefixes, keys=[0, 1, 2, 3], K=2, gamma=1.0, play=fake_play(calls))
    # s_0, empty prefix: copy 0 plays "10","10" -> 2, copy 1 "00","00" -> 0: V = 1
    # s_0, prefix "1": both finish the first action as "10" (1), then "10" / "00" on turn 2: V = (2 + 1) / 2
    # after "11", empty prefix: one turn left, "10" / "00": V = 0.5 (the earlier reward 2 is not counted)
    # after "11", prefix "0": "00" either way: V = 0
    assert close(values, [1.0, 1.5, 0.5, 0.0]) and n == 8
    assert len(calls) == 1 and calls[0][0] == 8  # every state's rollouts in one batch
    assert env.turn == 0 and after_one.turn == 1  # the saved states are cloned, never played


def test_mc_values_discount_turns_and_share_equal_states():
    env = Bits()
    env.reset(0)
    calls = []
    keys = [state_key(0, env, [ord("1")]), state_key(0, env, [ord("1")]), state_key(1, env, [ord("1")])]
    values, n = mc_state_values([env, env, env], [[ord("1")]] * 3, keys, K=2, gamma=0.5, play=fake_play(calls))
    # prefix "1" -> "10" (1) then turn 2 "10" / "00": V = 1 + 0.5 * (1 + 0) / 2 = 1.25
    assert close(values, [1.25, 1.25, 1.25])
    assert n == 4 and calls[0][0] == 4  # rows 0 and 1 share one state; row 1's (another group) is its own
    _, n_batched = mc_state_values([env] * 3, [[ord("1")]] * 3, [0, 1, 2], K=2, gamma=0.5, play=fake_play(calls),
                                   batch_size=4)
    assert n_batched == 6 and [c[0] for c in calls[1:]] == [4, 2]


# ---- real runs ------------------------------------------------------------------------------------------
def _metrics(cfg, summary) -> dict:
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    return client.get_run(summary["mlflow_run_id"]).data.metrics


def test_vineppo_runs_on_gridworld(fast_cfg):
    cfg = fast_cfg("vineppo", ["task=gridworld", "method.mc_rollouts=2"])
    summary = run(cfg)
    assert summary["metrics"]["steps"] == 4
    metrics = _metrics(cfg, summary)
    for key in ("train/mc_rollouts", "train/mc_states", "train/value_mean", "test/success_rate",
                "test_before/success_rate", "train/kl"):
        assert key in metrics, key
    assert metrics["train/mc_rollouts"] >= 2 and metrics["train/mc_rollouts"] % 2 == 0
    assert math.isfinite(metrics["train/policy_loss"])


def test_vineppo_runs_on_arithmetic_with_token_steps(fast_cfg):
    # max_mc_steps=1: only the states before an answer's first two tokens get MC values, the rest are filled
    cfg = fast_cfg("vineppo", ["task=arithmetic", "method.step_split=token", "method.mc_rollouts=2",
                               "method.max_mc_steps=1"])
    summary = run(cfg)
    metrics = _metrics(cfg, summary)
    assert summary["metrics"]["steps"] == 4
    # every answer has >= 1 token, 2 x 2 episodes per step: at least 2 shared first states, 2 rollouts each;
    # at most 2 estimated states per episode
    assert 4 <= metrics["train/mc_rollouts"] <= 2 * 2 * 4 and metrics["train/steps"] >= 4
    assert 0.0 <= metrics["train/value_mean"] <= 1.0
    assert "test/success_rate" in metrics


@pytest.mark.parametrize("field, value", [("step_split", "sentence"), ("mc_rollouts", 0), ("mc_rollouts", 2.5),
                                          ("gamma", 1.5), ("max_mc_steps", -1), ("mc_batch_size", 0)])
def test_bad_vineppo_settings_name_the_field(field, value):
    method = OmegaConf.create({"step_split": "turn", "mc_rollouts": 4, "gamma": 1.0, field: value})
    with pytest.raises(ConfigError, match=f"method.{field}"):
        check_config(method)


def test_the_module_checks_its_settings_before_building_anything():
    method = OmegaConf.create({"step_split": "sentence", "mc_rollouts": 4})
    with pytest.raises(ConfigError, match="method.step_split"):
        VineModule(policy=None, task=None, method=method)
