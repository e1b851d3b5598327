"""Short seeded runs move the normalized score the right way: BC and TD3+BC on the Pendulum expert data, SAC
online on Pendulum. (The >= 90 budgets at full size are in reports/offline_rl.md.)"""

import pytest

from workbench.train import run

SMALL = ["method.hidden=[64,64]", "task.eval_episodes=5", "method.log_every=100"]


@pytest.mark.parametrize("method,steps,floor", [("bc", 1500, 80.0), ("td3_bc", 1500, 60.0)])
def test_offline_method_learns_from_expert_data(fast_cfg, method, steps, floor):
    m = run(fast_cfg(method, [*SMALL, f"trainer.max_steps={steps}", f"method.val_check_interval={steps}"]))["metrics"]
    assert m["test_before/normalized_score"] < 20
    assert m["test/normalized_score"] > floor


def test_sac_learns_pendulum_online(fast_cfg):
    m = run(fast_cfg("sac", [*SMALL, "trainer.max_steps=4000", "method.val_check_interval=4000",
                             "method.online.random_steps=500"]))["metrics"]
    assert m["test_before/normalized_score"] < 20
    assert m["test/normalized_score"] > 60
