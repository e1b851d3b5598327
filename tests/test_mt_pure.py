"""PURE: the min-form transform, the leave-one-out baselines and the token-level advantages on hand-computed
values; the module's turn-row <-> token layout on a hand-built batch; a short run on gridworld."""

from __future__ import annotations

import math

import mlflow
import pytest
import torch
from omegaconf import OmegaConf

from workbench.errors import ConfigError
from workbench.methods.multi_turn.pure import (min_form_rewards, min_form_weights, pure_advantages,
                                               rloo_step_baseline)

T = torch.tensor


def _mask(*counts: int, K: int | None = None) -> torch.Tensor:
    K = K or max(counts)
    return torch.arange(K)[None, :] < T(counts)[:, None]


# ---- the transform ----------------------------------------------------------------------------------------
def test_weights_are_a_softmin_over_the_real_steps():
    pr = T([[1.0, 0.0, 0.0], [1.0, -1.0, 0.5]])
    mask = _mask(2, 3)
    w = min_form_weights(pr, mask, temperature=1.0)
    a = math.exp(-1.0)  # exp(-PR / T) at PR = 1, T = 1; the padded third step of row 0 gets nothing
    assert torch.allclose(w[0], T([a / (a + 1), 1 / (a + 1), 0.0]))
    b = [math.exp(-1.0), math.exp(1.0), math.exp(-0.5)]
    assert torch.allclose(w[1], T([x / sum(b) for x in b]))
    assert torch.allclose(w.sum(-1), torch.ones(2))
    assert torch.allclose(min_form_rewards(pr, mask, 1.0)[0], T([a / (a + 1), 0.0, 0.0]))


def test_small_temperature_approaches_the_min():
    pr = T([[0.9, 0.3, 0.8, 0.6], [0.5, -0.2, 0.1, 0.0]])
    mask = _mask(4, 3)  # row 1's last step is padding: its 0.0 must not count as the min
    mins = T([0.3, -0.2])
    errors = [(min_form_rewards(pr, mask, t).sum(-1) - mins).abs().max().item() for t in (1.0, 0.1, 0.05, 0.02, 0.01)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-5 and errors[1] > 1e-3  # T = 0.1 (the official value) is a soft min on these gaps
    # a large temperature is the plain mean (the sum divided by the number of steps)
    assert torch.allclose(min_form_rewards(pr, mask, 1e6).sum(-1), T([0.65, 0.4 / 3]), atol=1e-5)


def test_one_bad_step_decides_the_min_form_but_not_the_sum():
    pr = T([[1.0, 1.0, 1.0, -1.0], [1.0, 1.0, 1.0, 1.0], [1.0, -1.0, -1.0, 0.0]])
    mask = _mask(4, 4, 3)
    mins = min_form_rewards(pr, mask, 0.1, credit="min")
    sums = min_form_rewards(pr, mask, 0.1, credit="sum")
    assert torch.allclose(sums.sum(-1), T([2.0, 4.0, -1.0]))
    assert torch.allclose(mins.sum(-1), T([-1.0, 1.0, -1.0]), atol=1e-6)
    assert torch.allclose(mins[1], torch.full((4,), 0.25))  # all good: uniform weights, return 1 whatever the length
    assert torch.allclose(mins[2], T([0.0, -0.5, -0.5, 0.0]), atol=1e-6)  # two equally bad steps share the weight
    with pytest.raises(ValueError, match="credit"):
        min_form_rewards(pr, mask, 0.1, credit="max")


# ---- the RLOO baselines -------------------------------------------------------------------------------------
def _batch():
    """Two groups of two trajectories with unequal step counts and step lengths (transformed rewards given)."""
    rewards = T([[0.5, 0.5, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.6, 0.0, 0.0]])
    mask = _mask(2, 1, 3, 1)
    tokens = T([[2, 3, 0], [4, 0, 0], [1, 2, 1], [3, 0, 0]])
    groups = T([0, 0, 1, 1])
    return rewards, mask, tokens, groups


def test_token_baseline_is_the_others_reward_per_token_times_the_step_tokens():
    rewards, mask, tokens, groups = _batch()
    # outcomes 1, -1 | 1, 0.6; lengths 5, 4 | 4, 3 -> others' reward per token -1/4, 1/5 | 0.6/3, 1/4
    body = rloo_step_baseline(rewards, mask, tokens, groups, "token", "body")  # tokens before each step's end
    assert torch.allclose(body, T([[-0.25, -0.5, 0.0], [0.6, 0.0, 0.0], [0.0, 0.2, 0.0], [0.5, 0.0, 0.0]]))
    every = rloo_step_baseline(rewards, mask, tokens, groups, "token", "all")
    assert torch.allclose(every, T([[-0.5, -0.75, 0.0], [0.8, 0.0, 0.0], [0.2, 0.4, 0.2], [0.75, 0.0, 0.0]]))
    # with every token counted, a trajectory's baselines add up to (others' reward per token) x its own length,
    # however its tokens are split into steps: no step-count bias
    assert torch.allclose(every.sum(-1), T([-0.25 * 5, 0.2 * 4, 0.2 * 4, 0.25 * 3]))


def test_step_baseline_is_the_others_mean_reward_per_step():
    rewards, mask, tokens, groups = _batch()
    # reward per step: 0.5, -1 | 1/3, 0.6
    b = rloo_step_baseline(rewards, mask, tokens, groups, "step")
    assert torch.allclose(b, T([[-1.0, -1.0, 0.0], [0.5, 0.0, 0.0], [0.6, 0.6, 0.6], [1 / 3, 0.0, 0.0]]))


def test_a_group_of_one_has_no_baseline():
    rewards, mask, tokens, _ = _batch()
    b = rloo_step_baseline(rewards, mask, tokens, T([0, 1, 2, 2]), "token", "all")
    assert torch.allclose(b[:2], torch.zeros(2, 3))
    assert torch.allclose(b[2], T([0.6 / 3, 0.4, 0.2]))


# ---- token-level advantages -----------------------------------------------------------------------------
def _pair():
    """A: two steps of two tokens (good, then bad); B: one step of three tokens (good). One group."""
    return T([[1.0, -1.0], [1.0, 0.0]]), _mask(2, 1), T([[2, 2], [3, 0]]), T([0, 0])


def test_min_form_advantages_by_hand():
    pr, mask, tokens, groups = _pair()
    adv, loss_mask, parts = pure_advantages(pr, mask, tokens, groups, normalize=False)
    # PR'_A = [~0, -1] (outcome -1), PR'_B = [1]. Baselines (body tokens): A: (1 / 3) x [1, 1]; B: (-1 / 4) x 2.
    # A's step rewards [-1/3, -4/3] sit on columns 1 and 3; B's 1.5 on column 2. Step ends take no loss.
    assert torch.allclose(parts["outcome"], T([-1.0, 1.0]), atol=1e-6)
    assert torch.allclose(adv, T([[-5 / 3, 0.0, -4 / 3, 0.0], [1.5, 1.5, 0.0, 0.0]]), atol=1e-6)
    assert loss_mask.tolist() == [[True, False, True, False], [True, True, False, False]]
    kept, _, _ = pure_advantages(pr, mask, tokens, groups, normalize=False, mask_step_end=False)
    assert torch.allclose(kept, T([[-5 / 3, -5 / 3, -4 / 3, -4 / 3], [1.5, 1.5, 1.5, 0.0]]), atol=1e-6)


def test_sum_form_rewards_the_good_step_before_a_bad_one():
    pr, mask, tokens, groups = _pair()
    adv, _, parts = pure_advantages(pr, mask, tokens, groups, credit="sum", normalize=False)
    # PR' = PR: outcomes 0 and 1; baselines A: (1 / 3) x [1, 1], B: 0
    assert torch.allclose(parts["outcome"], T([0.0, 1.0]))
    assert torch.allclose(adv, T([[-2 / 3, 0.0, -4 / 3, 0.0], [1.0, 1.0, 0.0, 0.0]]), atol=1e-6)


def test_verifiable_reward_and_kl_enter_the_reward():
    pr, mask, tokens, groups = _pair()
    base, _, _ = pure_advantages(pr, mask, tokens, groups, normalize=False)
    vr = T([[0.0, 1.0], [0.0, 0.0]])  # A earned the env reward on its last step, B none
    with_vr, _, _ = pure_advantages(pr, mask, tokens, groups, normalize=False, verifiable=vr, verifiable_coef=0.1)
    # A: +0.1 at its last step, baseline 0 (B's VR); B: -0.1 x (A's VR 1) at its end
    assert torch.allclose(with_vr - base, T([[0.1, 0.0, 0.1, 0.0], [-0.1, -0.1, 0.0, 0.0]]), atol=1e-6)
    kl = torch.ones(2, 4)  # B's fourth column is padding: its KL must not count
    with_kl, _, _ = pure_advantages(pr, mask, tokens, groups, normalize=False, token_kl=kl, beta=0.1)
    # -0.1 per token of the reward-to-go: column u of an L-token trajectory loses 0.1 x (L - u)
    assert torch.allclose(with_kl - base, T([[-0.4, 0.0, -0.2, 0.0], [-0.3, -0.2, 0.0, 0.0]]), atol=1e-6)


def test_advantages_are_whitened_over_the_loss_tokens():
    pr, mask, tokens, groups = _pair()
    raw, loss_mask, _ = pure_advantages(pr, mask, tokens, groups, normalize=False)
    adv, _, _ = pure_advantages(pr, mask, tokens, groups)
    x = raw[loss_mask]
    assert torch.allclose(adv[loss_mask], (x - x.mean()) / x.std(unbiased=False), atol=1e-5)
    assert (adv[~loss_mask] == 0).all()


def test_token_baseline_favours_the_longer_of_two_equally_bad_trajectories():
    """A property of the official baseline, not a bug here: the min-form outcome does not grow with length, the
    baseline (others' reward per token x own tokens) does, so with negative outcomes length pays."""
    pr = T([[-1.0, -1.0, 0.0, 0.0], [-1.0, -1.0, -1.0, -1.0]])
    mask, tokens, groups = _mask(2, 4), T([[2, 2, 0, 0], [2, 2, 2, 2]]), T([0, 0])
    adv, _, parts = pure_advantages(pr, mask, tokens, groups, normalize=False)
    assert torch.allclose(parts["outcome"], T([-1.0, -1.0]))
    # A: others' -1 / 8 tokens x 1 body token per step -> step rewards -1/2 + 1/8; B: -1/4 + 1/4 = 0
    assert torch.allclose(adv[:, 0], T([-0.75, 0.0]))


def test_an_eos_only_step_takes_no_loss_when_step_ends_are_masked():
    """Why the config unmasks step ends: an action that is only its EOS (empty, invalid) is its own end token."""
    pr, mask, tokens, groups = T([[-1.0, 1.0], [1.0, 0.0]]), _mask(2, 1), T([[1, 2], [2, 0]]), T([0, 0])
    _, masked, _ = pure_advantages(pr, mask, tokens, groups)
    adv, unmasked, _ = pure_advantages(pr, mask, tokens, groups, normalize=False, mask_step_end=False)
    assert not masked[0, 0] and unmasked[0, 0]
    assert adv[0, 0] < 0 < adv[1, 0]  # the empty action's EOS is pushed down, the good one's tokens up


def test_a_step_without_tokens_is_refused():
    with pytest.raises(ValueError, match="token"):
        pure_advantages(T([[1.0]]), _mask(1), T([[0]]), T([0]))


# ---- the module: turn rows <-> trajectories ----------------------------------------------------------------
def _cfg(**over):
    base = dict(credit_form="min", min_form_temperature=0.1, reward_baseline="token", baseline_step_tokens="body",
                verifiable_reward=False, verifiable_reward_coef=0.1, mask_step_end=True, normalize_advantages=False,
                kl_in_reward=False, beta=0.0, group_size=2)
    return OmegaConf.create({**base, **over})


def test_module_lays_turn_rows_out_as_trajectories():
    from workbench.methods.multi_turn.pure import PureModule
    from workbench.methods.multi_turn.rollout import Episodes, Turns
    from workbench.policy.sampler import Rollout

    # the _pair batch as turn rows: episode 0 = turns of 2 and 2 tokens, episode 1 = one turn of 3 tokens
    cm = T([[1, 1, 0], [1, 1, 0], [1, 1, 1]])
    rollout = Rollout(torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 2, dtype=torch.long),
                      torch.zeros(3, 3, dtype=torch.long), cm, ["up", "down", "left"], torch.zeros(3, dtype=torch.bool))
    turns = Turns(rollout, episode=T([0, 0, 1]), step=T([0, 1, 0]), rewards=T([0.0, 1.0, 0.0]),
                  process_rewards=T([1.0, -1.0, 1.0]), dones=T([False, True, True]), valid=T([True, True, True]),
                  state_keys=["a", "b", "a"])
    episodes = Episodes(turns, group=T([0, 0]), returns=T([1.0, 0.0]), success=T([True, False]),
                        num_turns=T([2, 1]), truncated=T([False, True]), invalid=T([0, 0]))
    module = PureModule.__new__(PureModule)
    torch.nn.Module.__init__(module)
    module.cfg, module.ref_logprobs = _cfg(), None
    adv = module.advantages(episodes)
    assert torch.allclose(adv, T([[-5 / 3, 0.0, 0.0], [-4 / 3, 0.0, 0.0], [1.5, 1.5, 0.0]]), atol=1e-6)
    # KL folded into the reward, read from the per-row log-probs (k1 = old - ref)
    module.cfg = _cfg(kl_in_reward=True, beta=0.1, kl_estimator="k1")
    module.old_logprobs = torch.zeros(3, 3)
    module.ref_logprobs = -torch.ones(3, 3)  # k1 = 1 on every token, also on padding (must be ignored)
    with_kl = module.advantages(episodes)
    assert torch.allclose(with_kl - adv, T([[-0.4, 0.0, 0.0], [-0.2, 0.0, 0.0], [-0.3, -0.2, 0.0]]), atol=1e-6)


@pytest.mark.parametrize("field,value", [("credit_form", "max"), ("reward_baseline", "trajectory"),
                                         ("baseline_step_tokens", "some"), ("min_form_temperature", 0),
                                         ("group_size", 1)])
def test_bad_settings_are_one_line_errors(field, value):
    from workbench.methods.multi_turn.pure import PureModule

    with pytest.raises(ConfigError, match=f"method.{field}"):
        PureModule(None, None, _cfg(**{field: value}))


# ---- a short run ------------------------------------------------------------------------------------------------
def test_pure_runs_on_gridworld(fast_cfg):
    from workbench.train import run

    cfg = fast_cfg("pure", ["task=gridworld"])
    summary = run(cfg)
    m = summary["metrics"]
    assert 0.0 <= m["test/success_rate"] <= 1.0 and 0.0 <= m["test_before/success_rate"] <= 1.0
    client = mlflow.MlflowClient(cfg.logger.tracking_uri)
    keys = set(client.get_run(summary["mlflow_run_id"]).data.metrics)
    assert {"train/pure_outcome", "train/process_reward", "train/advantage_abs", "train/kl"} <= keys
    outcome = [x.value for x in client.get_metric_history(summary["mlflow_run_id"], "train/pure_outcome")]
    assert len(outcome) == 4 and all(-1.0 - 1e-6 <= o <= 1.0 + 1e-6 for o in outcome)
