"""Control datasets: the shipped expert data loads through `datasets` with its references; bad arrays and bad
control configs fail with one line naming the field/array and the fix, before any MLflow run is created."""

import subprocess

import mlflow
import numpy as np
import pytest

from conftest import cli_env, python
from workbench import ROOT
from workbench.config import validate
from workbench.errors import ConfigError
from workbench.tasks.control.datasets import check_transitions, load_transitions, normalized_score
from workbench.tasks.control.envs import env_spec
from workbench.train import run

DATA = ROOT / "data" / "offline_rl"


def test_shipped_expert_data_loads_with_references():
    spec = env_spec("Pendulum-v1")
    t = load_transitions(DATA / "pendulum_expert", spec)
    assert len(t) == 11200 and t.observations.shape == (11200, 3) and t.actions.shape == (11200, 1)
    assert np.abs(t.actions).max() <= 1.0  # scaled from Pendulum's [-2, 2]
    returns = t.episode_returns()
    assert len(returns) == 56 and returns.mean() == pytest.approx(t.meta["ref_max_score"], rel=1e-5)
    assert normalized_score(t.meta["ref_min_score"], t.meta["ref_min_score"], t.meta["ref_max_score"]) == 0
    assert normalized_score(returns.mean(), t.meta["ref_min_score"], t.meta["ref_max_score"]) == pytest.approx(100)
    cart = load_transitions(DATA / "cartpole_expert", env_spec("CartPole-v1"))
    assert cart.actions.dtype == np.int64 and set(np.unique(cart.actions)) == {0, 1} and len(cart.episode_returns()) == 57
    assert (DATA / "LICENSE").is_file() and (DATA / "SOURCE.md").is_file()


def good_arrays(n=20):
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n + 1, 3)).astype(np.float32)
    return {"observations": obs[:-1], "next_observations": obs[1:], "actions": rng.uniform(-2, 2, (n, 1)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32), "terminals": np.zeros(n, bool), "timeouts": np.eye(1, n, n - 1, dtype=bool)[0]}


def broken(kind):
    a = good_arrays()
    if kind == "mismatch":
        a["actions"] = a["actions"][:-3]
    elif kind == "nan":
        a["rewards"][7] = np.nan
    elif kind == "action_dim":
        a["actions"] = np.zeros((20, 2), np.float32)
    elif kind == "missing":
        del a["timeouts"]
    elif kind == "obs_dim":
        a["observations"] = np.zeros((20, 4), np.float32)
    elif kind == "bounds":
        a["actions"][3] = 5.0
    return a


@pytest.mark.parametrize("kind,words", [
    ("mismatch", ["'actions' has 17 rows", "'observations' has 20"]),
    ("nan", ["'rewards'", "NaN", "row 7"]),
    ("action_dim", ["'actions'", "(20, 2)", "1-dimensional"]),
    ("missing", ["missing array 'timeouts'"]),
    ("obs_dim", ["'observations'", "(20, 4)", "observes 3"]),
    ("bounds", ["'actions'", "outside", "[-2, 2]"]),
])
def test_bad_arrays_name_the_array_and_the_fix(kind, words):
    with pytest.raises(ConfigError) as e:
        check_transitions(broken(kind), env_spec("Pendulum-v1"), "task.dataset.path (x.npz)")
    msg = str(e.value)
    assert "\n" not in msg and "->" in msg and msg.startswith("task.dataset.path")
    for w in words:
        assert w in msg


def test_bad_dataset_file_fails_in_the_cli_before_any_run(tmp_path):
    np.savez(tmp_path / "bad.npz", **broken("nan"))
    out = subprocess.run([python(), "-m", "workbench.train", "method=bc", "task=pendulum_expert",
                          f"task.dataset.path={tmp_path / 'bad.npz'}", "trainer.progress_bar=false"],
                         cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("workbench: error:")]
    assert len(lines) == 1 and "'rewards'" in lines[0] and "NaN" in lines[0]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_dataset_from_another_env_is_refused(fast_cfg):
    with pytest.raises(ConfigError, match="observes 3"):
        run(fast_cfg("bc", [f"task.dataset.path={DATA / 'cartpole_expert'}"]))


@pytest.mark.parametrize("overrides,field", [
    (["method=td3_bc", "task=arithmetic"], "task"),
    (["method=grpo", "task=pendulum_expert"], "method"),
    (["method=td3_bc", "task=cartpole_expert"], "task"),
    (["method=td3_bc", "task=pendulum_expert", "method.gamma=1.5"], "method.gamma"),
    (["method=td3_bc", "task=pendulum_expert", "task.eval_episodes=0"], "task.eval_episodes"),
    (["method=td3_bc", "task=pendulum_expert", "method.hidden=[0]"], "method.hidden"),
    (["method=td3_bc", "task=pendulum_expert", "method.reward_normalization=zscore"], "method.reward_normalization"),
    (["method=td3_bc", "task=pendulum"], "task.dataset"),
    (["method=td3_bc", "task=pendulum_expert", "trainer=ddp_cpu"], "trainer.devices"),
])
def test_bad_control_configs(overrides, field, tmp_path):
    from conftest import compose_cfg

    cfg = compose_cfg(overrides, tmp_path / "run")
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert e.value.field == field and "\n" not in str(e.value)
