"""Critique-RL: the rewards of both stages (every refine_reward mode, the -1 override), the RLOO advantages over the
critiques of one first attempt, the class-balance weights, the config checks, and tiny runs in which the critic trains
while the actor stays frozen (one with balance_classes, whose weights reach the update)."""

from __future__ import annotations

import mlflow
import pytest
import torch

from workbench.errors import ConfigError
from workbench.methods.self_correction import critique_rl
from workbench.methods.self_correction.critique_rl import (
    NO_VERDICT,
    CritiqueRLModule,
    class_balance_weights,
    critique_advantages,
    critique_rewards,
    discrimination_reward,
    parse_verdicts,
    refinement_reward,
    stage2_reward,
    validate_critique_rl,
    verdict_metrics,
)
from workbench.train import run

T = torch.tensor
# the four transitions, in this order: c->c, c->i, i->c, i->i
C1 = T([1.0, 1.0, 0.0, 0.0])
C2 = T([1.0, 0.0, 1.0, 0.0])


def test_parse_verdicts_reads_the_first_verdict_word():
    texts = ["The answer is correct.", "The answer is wrong, it is too high.", "The answer is", "",
             "Wrong, not correct"]
    assert parse_verdicts(texts).tolist() == [1, 0, NO_VERDICT, NO_VERDICT, 0]


def test_discrimination_reward_plus_one_for_a_right_verdict_minus_one_otherwise():
    first = T([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    verdict = T([1, 0, 0, 1, NO_VERDICT, NO_VERDICT])
    assert discrimination_reward(first, verdict).tolist() == [1.0, -1.0, 1.0, -1.0, -1.0, -1.0]
    # stage II builds the same term with 0.2 for a right verdict; the penalty stays -1
    assert discrimination_reward(first, verdict, right=0.2).tolist() == pytest.approx([0.2, -1.0, 0.2, -1.0, -1.0, -1.0])


@pytest.mark.parametrize("mode,expected", [
    ("r_refine", [1.0, 0.0, 1.0, 0.0]),   # 1[y2 correct]
    ("r_correct", [0.2, 0.0, 1.0, 0.0]),  # c->c 0.2, c->i 0, i->c 1, i->i 0
    ("r_delta", [0.0, -1.0, 1.0, 0.0]),   # c->c 0, c->i -1, i->c 1, i->i 0
])
def test_refinement_reward_modes(mode, expected):
    assert refinement_reward(C1, C2, mode).tolist() == pytest.approx(expected)


@pytest.mark.parametrize("mode,with_right_verdicts", [
    ("r_refine", [1.2, 0.2, 1.2, 0.2]),
    ("r_correct", [0.4, 0.2, 1.2, 0.2]),
    ("r_delta", [0.2, -0.8, 1.2, 0.2]),
])
def test_stage2_reward_adds_the_bonus_and_a_bad_verdict_replaces_the_reward(mode, with_right_verdicts):
    right = C1.long()  # every verdict matches y1's correctness: helpfulness + 0.2
    assert stage2_reward(C1, C2, right, mode).tolist() == pytest.approx(with_right_verdicts)
    # y1 correct but called wrong; y1 correct with no verdict; y1 wrong and called wrong; y1 wrong but called correct
    mixed = T([0, NO_VERDICT, 0, 1])
    expected = [-1.0, -1.0, with_right_verdicts[2], -1.0]  # -1 replaces the reward, it is not added to it
    assert stage2_reward(C1, C2, mixed, mode).tolist() == pytest.approx(expected)


def test_critique_rewards_dispatch_by_stage():
    verdict = T([1, 1, 0, 0])
    # stage I: discrimination only, no refinements needed
    assert critique_rewards(1, C1, verdict).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert critique_rewards(2, C1, verdict, C2, "r_delta").tolist() == pytest.approx([0.2, -0.8, 1.2, 0.2])
    with pytest.raises(ValueError):
        critique_rewards(2, C1, verdict, None)
    with pytest.raises(ValueError):
        refinement_reward(C1, C2, "r_other")


def test_rloo_advantages_over_the_critiques_of_one_first_attempt():
    # two first attempts, 4 critiques each; A_j = r_j - mean of the other 3
    rewards = T([1.0, -1.0, 1.0, 1.0, 1.2, -1.0, 0.2, 1.2])
    adv = critique_advantages(rewards, 4, "rloo")
    expected = [1 - 1 / 3, -1 - 1, 1 - 1 / 3, 1 - 1 / 3,
                1.2 - (-1 + 0.2 + 1.2) / 3, -1 - (1.2 + 0.2 + 1.2) / 3, 0.2 - (1.2 - 1 + 1.2) / 3, 1.2 - (1.2 - 1 + 0.2) / 3]
    assert adv.tolist() == pytest.approx(expected)
    assert adv.view(2, 4).sum(-1).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert critique_advantages(T([0.2, 0.2, -1.0, -1.0]), 2, "rloo").tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0])


def test_verdict_metrics_are_fractions_of_all_critiques():
    m = verdict_metrics(T([1, 0, 0, NO_VERDICT]), T([1.0, 1.0, 0.0, 0.0]))
    assert m["verdict_accuracy"].item() == pytest.approx(0.5)
    assert m["verdict_missing"].item() == pytest.approx(0.25)
    assert m["verdict_caught"].item() == pytest.approx(0.25)
    assert m["verdict_false_alarm"].item() == pytest.approx(0.25)


def test_class_balance_weights_give_each_class_half_the_step():
    # 3 critiques of right first attempts, 1 of a wrong one: N / (2 N_class) = 4/6 and 4/2
    w = class_balance_weights(T([1.0, 1.0, 1.0, 0.0]))
    assert torch.allclose(w, T([2 / 3, 2 / 3, 2 / 3, 2.0]))
    assert w[:3].sum().item() == pytest.approx(w[3:].sum().item()) and w.sum().item() == pytest.approx(4.0)
    # one class only: nothing to balance
    assert torch.equal(class_balance_weights(T([1.0, 1.0])), T([1.0, 1.0]))
    assert torch.equal(class_balance_weights(T([0.0, 0.0, 0.0])), T([1.0, 1.0, 1.0]))


def _method(fast_cfg, extra=()):
    return fast_cfg("critique_rl", list(extra)).method


@pytest.mark.parametrize("override,field", [
    ("method.refine_reward=r_best", "method.refine_reward"),
    ("method.stage1_steps=-1", "method.stage1_steps"),
    ("method.protocol.feedback=verdict", "method.protocol.feedback"),
    ("method.critique_max_new_tokens=0", "method.critique_max_new_tokens"),
    ("method.refine_temperature=-0.5", "method.refine_temperature"),
    ("method.balance_classes=yes", "method.balance_classes"),
])
def test_bad_config_names_the_field_and_the_fix(fast_cfg, override, field):
    validate_critique_rl(_method(fast_cfg))  # the shipped config passes
    with pytest.raises(ConfigError) as err:
        validate_critique_rl(_method(fast_cfg, [override]))
    message = str(err.value)
    assert message.startswith(f"{field}:") and "\n" not in message


FAST_CRITIQUE = ["method.base.max_steps=3", "method.base.val_check_interval=3", "method.base.batch_size=8",
                 "method.group_size=2", "method.stage1_steps=2", "method.critique_max_new_tokens=8"]


def test_run_trains_the_critic_and_leaves_the_actor_frozen(fast_cfg, monkeypatch):
    seen = {}
    fit_start = CritiqueRLModule.on_fit_start

    def spy(self):
        fit_start(self)
        seen["module"] = self
        seen["actor"] = {k: v.detach().clone() for k, v in self.actor._model.state_dict().items()}
        seen["critic"] = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    monkeypatch.setattr(CritiqueRLModule, "on_fit_start", spy)
    # a 3-step warm start writes no verdict yet, so every critique earns -1 and RLOO gives zero advantages (and no
    # update to see); spread the real rewards so the critic gets a gradient through the real update path
    real = critique_rl.critique_rewards
    monkeypatch.setattr(critique_rl, "critique_rewards", lambda *a, **k: real(*a, **k) + torch.linspace(0, 1, len(a[1])))
    cfg = fast_cfg("critique_rl", FAST_CRITIQUE)
    summary = run(cfg)
    metrics = mlflow.MlflowClient(cfg.logger.tracking_uri).get_run(summary["mlflow_run_id"]).data.metrics
    for key in ("test_before/accuracy_t1", "test_before/accuracy_t2", "test_before/verdict_accuracy",
                "test/accuracy_t2", "test/delta", "test/verdict_accuracy", "test/verdict_missing", "val/verdict_caught",
                "train/reward", "train/verdict_accuracy", "train/stage", "train/kl", "train/time_generation"):
        assert key in metrics, key
    assert summary["metrics"]["steps"] == 4
    # steps 0-1 are stage I, 2-3 stage II: the last step logged refinement metrics
    assert metrics["train/stage"] == 2.0 and "train/accuracy_t2" in metrics and "train/delta_i_to_c" in metrics
    # the actor is frozen, so its greedy first attempts are the same before and after training
    assert metrics["test/accuracy_t1"] == metrics["test_before/accuracy_t1"]

    module = seen["module"]
    actor_after = module.actor._model.state_dict()
    assert all(torch.equal(actor_after[k].cpu(), v.cpu()) for k, v in seen["actor"].items())
    assert all(not p.requires_grad for p in module.actor._model.parameters())
    # the critic started as the same warm start and moved
    assert all(torch.equal(seen["actor"][k].cpu(), v.cpu()) for k, v in seen["critic"].items())
    critic_after = module.model.state_dict()
    assert any(not torch.equal(critic_after[k].cpu(), v.cpu()) for k, v in seen["critic"].items())
    # the actor is neither trained nor checkpointed: no parameter of it in the optimizer or in the module's state
    actor_ids = {id(p) for p in module.actor._model.parameters()}
    trained = [p for group in module.trainer.optimizers[0].param_groups for p in group["params"]]
    assert trained and not actor_ids & {id(p) for p in trained}
    assert len(module.state_dict()) == len(module.model.state_dict())


def test_balance_classes_scales_each_steps_advantages_by_the_class_weights(fast_cfg, monkeypatch):
    """balance_classes=true: the advantages that reach the update are RLOO's times N / (2 N_class), every step."""
    seen = {"adv": [], "weights": [], "update": []}
    real_adv, real_weights = critique_rl.critique_advantages, critique_rl.class_balance_weights
    real_rewards = critique_rl.critique_rewards
    # spread the rewards (a 3-step warm start writes no verdict: all -1, zero advantages) so the scaling is visible
    monkeypatch.setattr(critique_rl, "critique_rewards", lambda *a, **k: real_rewards(*a, **k) + torch.linspace(0, 1, len(a[1])))
    # and make every step hold both classes, so the weights are not all ones
    monkeypatch.setattr(CritiqueRLModule, "verify", lambda self, texts, answers: torch.arange(len(texts)).remainder(4).eq(0).float())

    def adv_spy(*a, **k):
        seen["adv"].append(real_adv(*a, **k))
        return seen["adv"][-1]

    def weights_spy(c1):
        seen["weights"].append(real_weights(c1))
        return seen["weights"][-1]

    backward = CritiqueRLModule._backward_rollout

    def backward_spy(self, r, chunks, fn, advantages, *a, **k):
        seen["update"].append(advantages.detach().cpu().clone())
        return backward(self, r, chunks, fn, advantages, *a, **k)

    monkeypatch.setattr(critique_rl, "critique_advantages", adv_spy)
    monkeypatch.setattr(critique_rl, "class_balance_weights", weights_spy)
    monkeypatch.setattr(CritiqueRLModule, "_backward_rollout", backward_spy)
    cfg = fast_cfg("critique_rl", FAST_CRITIQUE + ["method.balance_classes=true"])
    assert run(cfg)["metrics"]["steps"] == 4
    assert len(seen["update"]) == len(seen["weights"]) == 4
    for adv, w, used in zip(seen["adv"], seen["weights"], seen["update"]):
        assert not torch.equal(w, torch.ones_like(w)), w
        assert torch.allclose(used, adv.cpu() * w)
