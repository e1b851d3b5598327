"""A run killed with SIGKILL resumes from its last checkpoint into the same MLflow run, every step logged once."""

import random
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest

from conftest import FAST, cli_env, python


def _checkpoints(run_dir: Path) -> list[Path]:
    return list((run_dir / "checkpoints").glob("*.ckpt"))


def _start_and_kill_after_first_checkpoint(overrides: list[str], run_dir: Path, env: dict, jitter: float) -> None:
    """Launch a run and SIGKILL it at a random moment after its first checkpoint is on disk."""
    proc = subprocess.Popen([python(), "-m", "workbench.train", *overrides], cwd=run_dir.parent, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not _checkpoints(run_dir) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, jitter))  # "any moment" after the first checkpoint
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"run ended on its own before the kill (rc={proc.returncode}): {err[-2000:]}"


@pytest.mark.parametrize("method", ["sft", "grpo"])
def test_resume_after_sigkill_continues_the_same_run(tmp_path, method):
    run_dir = tmp_path / "run"
    steps = 120
    overrides = [
        f"method={method}", *FAST, f"trainer.max_steps={steps}", "method.val_check_interval=20",
        "model.hidden_size=64", "model.intermediate_size=128", "method.batch_size=16",
        f"hydra.run.dir={run_dir}",
    ]
    if method == "grpo":
        overrides += ["method.group_size=4", "method.base.max_steps=5", "method.base.val_check_interval=5"]
    env = cli_env(tmp_path)
    _start_and_kill_after_first_checkpoint(overrides, run_dir, env, jitter=0.5)

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("workbench")
    main = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("workbench.stage") == "main"]
    assert len(main) == 1 and main[0].info.status == "RUNNING"  # a killed process cannot say goodbye
    run_id = main[0].info.run_id
    logged_before = {m.step for m in client.get_metric_history(run_id, "train/loss")}
    assert logged_before and max(logged_before) < steps - 1

    done = subprocess.run([python(), "-m", "workbench.train", f"resume={run_dir}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("workbench.stage") == "main"]
    assert [r.info.run_id for r in runs] == [run_id]  # the same run, no new one
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in ("train/loss", "train/step_time", "train/lr"):
        history = [m.step for m in client.get_metric_history(run_id, key)]
        assert sorted(history) == list(range(steps)), f"{key}: duplicated or missing steps"
    val = [m.step for m in client.get_metric_history(run_id, "val/accuracy")]
    assert len(val) == len(set(val)) == steps // 20
    assert len(client.get_metric_history(run_id, "test_before/accuracy")) == 1
    assert len(client.get_metric_history(run_id, "test/accuracy")) == 1


def test_control_run_resumes_with_its_replay_buffer(tmp_path):
    """An online control run (SAC) killed after a checkpoint resumes into the same MLflow run with its replay buffer:
    every logged step once, and the buffer keeps growing from where it was (it travels in the checkpoint)."""
    run_dir = tmp_path / "run"
    steps, every, log_every = 300, 50, 10
    overrides = ["method=sac", "task=pendulum", "method.hidden=[32,32]", "method.batch_size=32", f"trainer.max_steps={steps}",
                 f"method.val_check_interval={every}", f"method.log_every={log_every}", "method.online.random_steps=100",
                 "task.eval_episodes=1", "trainer.progress_bar=false", "trainer.num_threads=1", f"hydra.run.dir={run_dir}"]
    env = cli_env(tmp_path)
    _start_and_kill_after_first_checkpoint(overrides, run_dir, env, jitter=0.3)
    done = subprocess.run([python(), "-m", "workbench.train", f"resume={run_dir}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("workbench")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("workbench.stage") == "main"]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    for key in ("train/critic_loss", "train/buffer_size"):
        assert [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)] == \
            list(range(log_every, steps + 1, log_every)), key
    sizes = [m.value for m in sorted(client.get_metric_history(run_id, "train/buffer_size"), key=lambda m: m.step)]
    assert sizes == sorted(sizes) and sizes[-1] == 100 + steps - 1  # random warm-up + one step per update after the first
    assert len(client.get_metric_history(run_id, "val/normalized_score")) == steps // every
    assert len(client.get_metric_history(run_id, "test_before/normalized_score")) == 1


def test_multi_turn_run_resumes_into_the_same_run(tmp_path):
    """GiGPO on the gridworld, killed after a checkpoint: the resumed run logs every step once and evaluates the
    SFT start only once."""
    run_dir = tmp_path / "run"
    steps = 60
    overrides = ["method=gigpo", "task=gridworld", *FAST, f"trainer.max_steps={steps}", "method.val_check_interval=20",
                 "method.group_size=2", "method.batch_size=2", "method.eval.batch_size=8",
                 "method.base.max_steps=5", "method.base.val_check_interval=5", f"hydra.run.dir={run_dir}"]
    env = cli_env(tmp_path)
    _start_and_kill_after_first_checkpoint(overrides, run_dir, env, jitter=0.5)
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("workbench")
    run_id = next(r.info.run_id for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("workbench.stage") == "main")
    done = subprocess.run([python(), "-m", "workbench.train", f"resume={run_dir}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in ("train/reward", "train/success_rate", "train/step_time"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(steps)), key
    assert len(client.get_metric_history(run_id, "test_before/success_rate")) == 1
    assert len(client.get_metric_history(run_id, "test/success_rate")) == 1
