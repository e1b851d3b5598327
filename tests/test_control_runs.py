"""Every control method (offline / hybrid RL) does a short end-to-end run through train.run; its MLflow record
reads back with evaluation on the real environment before and after."""

import json

import mlflow
import pytest

from conftest import method_family
from workbench import ROOT
from workbench.train import run

CONTROL = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml") if method_family(p.stem) == "offline_rl")


@pytest.mark.parametrize("method", CONTROL)
def test_control_method_fast_run(fast_cfg, method, tmp_path):
    summary = run(fast_cfg(method))
    m = summary["metrics"]
    assert m["steps"] == 6
    for prefix in ("test_before", "test", "val"):
        assert f"{prefix}/normalized_score" in m and f"{prefix}/return" in m
    assert m["val/best_normalized_score"] >= m["val/normalized_score"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["model"] == "mlp"
    client = mlflow.MlflowClient()
    record = client.get_run(summary["mlflow_run_id"])
    assert record.data.params["method.name"] == method and "model.name" not in record.data.params
    assert record.data.tags["workbench.family"] == "offline_rl"
    steps = [h.step for h in client.get_metric_history(summary["mlflow_run_id"], "train/step_time")]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # logged every log_every steps, once each


def test_discrete_task_runs_with_bc(fast_cfg):
    summary = run(fast_cfg("bc", ["task=cartpole_expert"]))
    assert summary["metrics"]["steps"] == 6 and "test/normalized_score" in summary["metrics"]


def _has_mujoco() -> bool:
    try:
        import mujoco  # noqa: F401
        import imageio  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_mujoco(), reason="the optional mujoco extra is not installed (pip install 'workbench[mujoco]')")
@pytest.mark.parametrize("task", ["hopper", "halfcheetah"])
def test_mujoco_task_runs_sac(fast_cfg, task):
    summary = run(fast_cfg("sac", [f"task={task}", "method.online.random_steps=8"]))
    assert summary["metrics"]["steps"] == 6 and "test/normalized_score" in summary["metrics"]


def test_mountain_car_continuous_runs_sac(fast_cfg):
    summary = run(fast_cfg("sac", ["task=mountain_car_continuous", "method.online.random_steps=8", "task.eval_episodes=1"]))
    assert summary["metrics"]["steps"] == 6
