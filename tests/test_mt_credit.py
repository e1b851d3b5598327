"""Multi-turn credit assignment on hand-built trajectories, and the rollout engine's rows and masks."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.methods.multi_turn.credit import (discounted_returns, gae, gigpo_advantages, macro_ids, segment_mean,
                                                 token_discounts)
from workbench.methods.multi_turn.ppo import clipped_value_loss, masked_whiten, token_credit
from workbench.methods.multi_turn.rollout import run_episodes
from workbench.policy.sampler import Rollout
from workbench.tasks.envs.gridworld import GridWorld

close = dict(atol=1e-6, rtol=0)


def test_discounted_returns_restart_at_each_episode():
    out = discounted_returns(torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0]), torch.tensor([0, 0, 0, 1, 1]), gamma=0.5)
    torch.testing.assert_close(out, torch.tensor([0.25, 0.5, 1.0, 0.5, 1.0]), **close)


def test_gae_by_hand_with_two_episodes():
    # episode A: r = 0, 0, 1; V = .5, .2, .4; gamma 1, lambda .5.  episode B: one token, r = 2, V = 1
    # A: delta_2 = 1 - .4 = .6; delta_1 = .4 - .2 = .2 -> A_1 = .2 + .5 * .6 = .5; delta_0 = .2 - .5 -> A_0 = -.3 + .25
    adv, ret = gae(torch.tensor([0.0, 0.0, 1.0, 2.0]), torch.tensor([0.5, 0.2, 0.4, 1.0]), torch.ones(4), 0.5,
                   torch.tensor([False, False, True, True]))
    torch.testing.assert_close(adv, torch.tensor([-0.05, 0.5, 0.6, 1.0]), **close)
    torch.testing.assert_close(ret, torch.tensor([0.45, 0.7, 1.0, 2.0]), **close)


def test_poad_discounts_only_at_action_ends_and_ntpo_every_token():
    # one episode, action 1 = tokens 0-1 (reward .5 on its last token), action 2 = token 2 (reward 1); gamma .9, lambda .5
    rewards, values = torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.5, 0.2, 0.4])
    action_end, episode_end = torch.tensor([False, True, True]), torch.tensor([False, False, True])
    poad = token_discounts(action_end, 0.9, "action")
    torch.testing.assert_close(poad, torch.tensor([1.0, 0.9, 0.9]), **close)
    adv, _ = gae(rewards, values, poad, 0.5, episode_end)
    # delta_2 = .6; delta_1 = .5 + .9 * .4 - .2 = .66 -> A_1 = .66 + .9 * .5 * .6 = .93
    # delta_0 = 0 + 1 * .2 - .5 = -.3 (no discount inside the action) -> A_0 = -.3 + 1 * .5 * .93 = .165
    torch.testing.assert_close(adv, torch.tensor([0.165, 0.93, 0.6]), **close)
    ntpo, _ = gae(rewards, values, token_discounts(action_end, 0.9, "token"), 0.5, episode_end)
    # delta_0 = .9 * .2 - .5 = -.32 -> A_0 = -.32 + .9 * .5 * .93 = .0985
    torch.testing.assert_close(ntpo, torch.tensor([0.0985, 0.93, 0.6]), **close)
    with pytest.raises(ValueError, match="discount_at"):
        token_discounts(action_end, 0.9, "turn")


def test_macro_ids_never_cross_an_action():
    rows, cols = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1]), torch.tensor([0, 1, 2, 3, 4, 5, 0, 1])
    assert macro_ids(rows, cols, 2).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert macro_ids(rows, cols, 4).tolist() == [0, 0, 0, 0, 1, 1, 2, 2]
    assert macro_ids(rows, cols, None).tolist() == [0, 0, 0, 0, 0, 0, 1, 1]
    assert macro_ids(rows, cols, 1).tolist() == list(range(8))
    torch.testing.assert_close(segment_mean(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 1])), torch.tensor([2.0, 5.0]))


class _Turns:
    """The two fields ``token_credit`` reads, for a hand-built batch."""

    def __init__(self, mask, episode):
        self.rollout = type("R", (), {"completion_mask": mask})()
        self.episode = episode

    def token_view(self):
        return torch.nonzero(self.rollout.completion_mask > 0, as_tuple=True)


def test_macro_action_gae_by_hand():
    # one episode: turn 0 has 3 tokens (V 1, 2, 3, reward 0), turn 1 has 2 tokens (V 4, 6, reward 1)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 6.0, 0.0]])
    rewards = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    turns = _Turns(mask, torch.tensor([0, 0]))
    adv, (macro_returns, ids) = token_credit(turns, values, rewards, 1.0, 1.0, credit="macro", macro_n=2)
    # macros: [1, 2] -> 1.5, [3] -> 3, [4, 6] -> 5; gamma = lambda = 1:
    # A_2 = 1 - 5 = -4; A_1 = (5 - 3) + A_2 = -2; A_0 = (3 - 1.5) + A_1 = -.5; returns = A + V = 1 each
    torch.testing.assert_close(adv, torch.tensor([[-0.5, -0.5, -2.0], [-4.0, -4.0, 0.0]]), **close)
    torch.testing.assert_close(macro_returns, torch.ones(3), **close)
    assert ids.tolist() == [0, 0, 1, 2, 2]
    # macro_n = 1 is token-level GAE
    tok_adv, _ = token_credit(turns, values, rewards, 1.0, 1.0, credit="macro", macro_n=1)
    gae_adv, returns = token_credit(turns, values, rewards, 1.0, 1.0, credit="gae")
    torch.testing.assert_close(tok_adv, gae_adv, **close)
    torch.testing.assert_close(returns, torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]), **close)


def test_gigpo_episode_and_anchor_state_advantages_by_hand():
    # group 0: episode 0 visits s0, s1 (rewards 0, 1); episode 1 visits s0, s2 (rewards 0, 0). Group 1: one row in s0.
    episode = torch.tensor([0, 0, 1, 1, 2])
    rewards = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0])
    step_returns = discounted_returns(rewards, episode, 0.5)  # .5, 1, 0, 0, 1
    episode_returns = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 1])
    keys = ["s0", "s1", "s0", "s2", "s0"]
    adv, a_step = gigpo_advantages(episode_returns, step_returns, groups, episode, keys, omega=1.0)
    # episode term: mean over the group's rows (1, 1, 0, 0) = .5; anchor s0 in group 0: returns .5, 0 -> +-.25;
    # s1, s2 and group 1's s0 are singletons -> 0; a one-episode group has no episode baseline -> 0
    torch.testing.assert_close(a_step, torch.tensor([0.25, 0.0, -0.25, 0.0, 0.0]), **close)
    torch.testing.assert_close(adv, torch.tensor([0.75, 0.5, -0.75, -0.5, 0.0]), **close)
    grpo, _ = gigpo_advantages(episode_returns, step_returns, groups, episode, keys, omega=0.0)
    torch.testing.assert_close(grpo, torch.tensor([0.5, 0.5, -0.5, -0.5, 0.0]), **close)
    std, _ = gigpo_advantages(episode_returns, step_returns, groups, episode, keys, mode="mean_std_norm")
    s_ep, s_step = math.sqrt(1 / 3), math.sqrt(0.125)  # sample stds of (1, 1, 0, 0) and (.5, 0)
    expected = [0.5 / s_ep + 0.25 / s_step, 0.5 / s_ep, -0.5 / s_ep - 0.25 / s_step, -0.5 / s_ep, 0.0]
    torch.testing.assert_close(std, torch.tensor(expected), atol=1e-4, rtol=0)


def test_gigpo_episode_statistics_over_trajectories_or_turn_rows():
    # episode 0 (return 1) has 3 turns, episode 1 (return 0) has 1: the row mean is .75, the episode mean .5
    episode = torch.tensor([0, 0, 0, 1])
    returns = torch.tensor([1.0, 1.0, 1.0, 0.0])
    groups = torch.zeros(4, dtype=torch.long)
    keys = ["a", "b", "c", "d"]
    rows, _ = gigpo_advantages(returns, returns, groups, episode, keys, omega=0.0, episode_stats="steps")
    trajs, _ = gigpo_advantages(returns, returns, groups, episode, keys, omega=0.0, episode_stats="trajectories")
    torch.testing.assert_close(rows, torch.tensor([0.25, 0.25, 0.25, -0.75]), **close)
    torch.testing.assert_close(trajs, torch.tensor([0.5, 0.5, 0.5, -0.5]), **close)


def test_value_loss_and_whitening():
    loss = clipped_value_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([2.0, 1.0]), clip=0.2)
    # item 0: unclipped (1-2)^2 = 1, clipped V = .2 -> (.2-2)^2 = 3.24 -> max .5 * 3.24; item 1: .5 * 1
    torch.testing.assert_close(loss, torch.tensor([1.62, 0.5]), **close)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    white = masked_whiten(torch.tensor([[1.0, 3.0, 100.0]]), mask)
    torch.testing.assert_close(white, torch.tensor([[-1.0, 1.0, 0.0]]), atol=1e-4, rtol=0)


# ---- the engine ---------------------------------------------------------------------------------------------
EOS, PAD = 1, 0


def _scripted_generate(envs, scripts: list[list[str]]):
    """A fake sampler: the engine asks for the live episodes in env order; each gets its script's next action."""

    def generate(texts, prefixes):
        live = [i for i, env in enumerate(envs) if not env.done]
        assert len(live) == len(texts)
        actions = [scripts[i][envs[i].turn] for i in live]
        prompt_ids = torch.full((len(texts), 1), 2)
        width = max(len(a) for a in actions) + 1
        ids = torch.full((len(texts), width), PAD)
        mask = torch.zeros((len(texts), width), dtype=torch.long)
        for i, a in enumerate(actions):
            ids[i, : len(a)] = torch.tensor([ord(c) for c in a])
            ids[i, len(a)] = EOS
            mask[i, : len(a) + 1] = 1
        return Rollout(prompt_ids, torch.ones_like(prompt_ids), ids, mask, actions, torch.zeros(len(texts), dtype=torch.bool))

    return generate


def test_engine_rows_rewards_and_masks():
    envs = [GridWorld(max_turns=4), GridWorld(max_turns=4)]
    for env in envs:
        env.reset(3)
    path, probe = [], envs[0].clone()
    while not probe.done:
        path.append(probe.expert_action())
        probe.step(path[-1])
    n0 = len(path)
    assert 2 <= n0 <= 3  # seed 3's layout: the second episode still reaches the goal after one wasted turn
    scripts = [path, ["jump", *path]]
    rendered = []
    episodes = run_episodes(envs, [0, 0], lambda p: rendered.append(p) or "x", _scripted_generate(envs, scripts), PAD)
    turns = episodes.turns
    assert turns.episode.tolist() == [0] * n0 + [1] * (n0 + 1)
    assert turns.step.tolist() == list(range(n0)) + list(range(n0 + 1))
    # a row's completion is exactly the action's characters + EOS: the environment's text is never in it
    for row, text in enumerate(turns.rollout.texts):
        assert int(turns.rollout.completion_mask[row].sum()) == len(text) + 1
        assert "".join(chr(c) for c in turns.rollout.completion_ids[row, : len(text)].tolist()) == text
    assert episodes.success.tolist() == [True, True]
    assert episodes.invalid.tolist() == [0, 1]
    assert turns.valid.tolist()[n0] is False
    assert float(turns.rewards[n0]) == pytest.approx(-0.1)  # the invalid-action penalty
    assert episodes.returns.tolist() == pytest.approx([1.0, 0.9])
    assert turns.dones.tolist() == [False] * (n0 - 1) + [True] + [False] * n0 + [True]
    assert turns.next_row().tolist()[:n0] == [*range(1, n0), -1]
    # history 0: the policy saw only the current grid; after "jump" it saw the invalid-action note and the grid
    assert rendered[0] == [{"role": "user", "content": envs[0].messages[0]["content"]}]
    assert any(p[0]["content"].startswith("invalid: say up, down, left or right\n") for p in rendered)
    # the anchor state of the invalid turn and of the next turn is the same grid
    assert turns.state_keys[n0] == turns.state_keys[n0 + 1]
