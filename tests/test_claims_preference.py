"""What the preference paper claims (conf/experiment/claims/ipo_bounded_gap.yaml, hypo_coverage.yaml) need from the
code: the synthetic task's restricted-coverage training pairs (task.train_min_offset) and the held-out log-ratio gap
(val|test/logratio_margin), checked on hand values."""

from __future__ import annotations

import pytest
import torch

from conftest import FAST, compose_cfg
from workbench.errors import ConfigError
from workbench.methods.preference.losses import PairLogps
from workbench.tasks.preference_synthetic import SyntheticPreferenceTask

SMALL = dict(max_value=9, spread=3, flip_rate=0.2, train_size=300, val_size=10, test_size=10, seed=7)


# ---- task.train_min_offset -----------------------------------------------------------------------------------
def test_default_pairs_are_unchanged():
    """The first training rows of a seeded task, as drawn before the option existed (train_min_offset = 0)."""
    rows = SyntheticPreferenceTask(**SMALL).splits["train"].to_list()[:3]
    assert [(r["prompt"], r["chosen"], r["rejected"], r["target"], r["answer"]) for r in rows] == [
        ("1+0=", "3", "4", "2", "1"), ("6+5=", "11", "8", "12", "11"), ("1+7=", "6", "5", "6", "8")]


def test_min_offset_one_never_pairs_the_exact_sum():
    full = SyntheticPreferenceTask(**SMALL)
    limited = SyntheticPreferenceTask(**SMALL, train_min_offset=1)
    rows, base = limited.splits["train"].to_list(), full.splits["train"].to_list()
    assert any(r["answer"] in (r["chosen"], r["rejected"]) for r in base)  # the full task does pair the exact sum
    for r in rows:
        d_chosen, d_rejected = abs(int(r["chosen"]) - int(r["answer"])), abs(int(r["rejected"]) - int(r["answer"]))
        assert d_chosen >= 1 and d_rejected >= 1 and d_chosen != d_rejected
        assert (d_chosen < d_rejected) != r["flipped"]  # labels still follow the oracle, flips as drawn
        assert r["chosen_reward"] == pytest.approx(-d_chosen / 3, abs=1e-6)
    # prompts, SFT targets and flips are the full task's; only the pair candidates differ
    for key in ("prompt", "target", "answer", "flipped"):
        assert [r[key] for r in rows] == [r[key] for r in base], key
    for split in ("validation", "test"):  # held-out pairs keep every candidate
        assert limited.splits[split].to_list() == full.splits[split].to_list()


def test_min_offset_two_of_spread_three_leaves_one_pair_kind():
    rows = SyntheticPreferenceTask(**{**SMALL, "flip_rate": 0.0}, train_min_offset=2).splits["train"].to_list()
    kinds = {(abs(int(r["chosen"]) - int(r["answer"])), abs(int(r["rejected"]) - int(r["answer"]))) for r in rows}
    assert kinds == {(2, 3)}


@pytest.mark.parametrize("value", [-1, 3, 1.5, True])
def test_bad_min_offset_names_its_field(value):
    with pytest.raises(ConfigError, match="task.train_min_offset"):
        SyntheticPreferenceTask(**SMALL, train_min_offset=value)


def test_min_offset_composes_from_the_command_line(tmp_path):
    from workbench.tasks import build_task

    cfg = compose_cfg(["method=dpo", "task=synthetic_preference", "+task.train_min_offset=1", "task.train_size=50",
                       "task.val_size=4", "task.test_size=4"], tmp_path)
    rows = build_task(cfg.task).split("train").to_list()
    assert all(r["answer"] not in (r["chosen"], r["rejected"]) for r in rows)


# ---- val/test logratio_margin ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dpo", "ipo"])
def test_logratio_margin_is_the_raw_gap_on_hand_values(method, tmp_path):
    from workbench.methods import method_class
    from workbench.policy import build_policy
    from workbench.tasks import build_task

    cfg = compose_cfg([f"method={method}", *FAST, "task=synthetic_preference", "method.beta=0.25"], tmp_path)
    task = build_task(cfg.task)
    module = method_class(cfg.method.module)(build_policy(cfg.model, cfg.paths.cache_dir, corpus=task.corpus()), task,
                                             cfg.method, cfg.trainer)
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    # h_w = [-1 - (-1.5), -2 - (-1)] = [0.5, -1]; h_l = [-3 - (-2), -1.5 - (-2.5)] = [-1, 1]; gap = [1.5, -2], mean -0.25
    lp = PairLogps(torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.5]), torch.tensor([2, 3]), torch.tensor([2, 2]),
                   torch.tensor([-1.5, -1.0]), torch.tensor([-2.0, -2.5]))
    module._log_pairs("val", lp, 2, on_step=False)
    assert logged["val/logratio_margin"] == pytest.approx(-0.25)  # nats, not scaled by beta nor by length
    assert logged["val/reward_margin"] == pytest.approx(0.25 * -0.25)
    # a reference-free loss without a reference logs no gap
    logged.clear()
    module.loss_types = ["simpo"]
    module._log_pairs("val", PairLogps(lp.chosen, lp.rejected, lp.chosen_tokens, lp.rejected_tokens), 2, on_step=False)
    assert "val/logratio_margin" not in logged and "val/reward_margin" in logged
