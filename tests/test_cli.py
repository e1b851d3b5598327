"""The CLI as a user types it: a two-job multirun, and SFT under trainer=ddp_cpu (two gloo processes)."""

import subprocess

import mlflow

from conftest import FAST, FAST_GRPO, cli_env, python


def _main_runs(uri):
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("workbench")
    runs = client.search_runs([exp.experiment_id])
    return client, [r for r in runs if r.data.tags.get("workbench.stage") == "main"], runs


def test_two_job_multirun_makes_two_runs_in_one_sweep(tmp_path):
    env = cli_env(tmp_path)
    env["WORKBENCH_CACHE"] = str(tmp_path / "cache")  # its own SFT cache: the base must be trained here, as a child run
    # '++' sets a key whether or not the method has it (sft has no group_size)
    cmd = [python(), "-m", "workbench.train", "-m", "method=sft,grpo", *FAST, *("++" + o for o in FAST_GRPO),
           f"hydra.sweep.dir={tmp_path / 'multi'}"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    client, main, everything = _main_runs(env["MLFLOW_TRACKING_URI"])
    assert sorted(r.data.tags["workbench.method"] for r in main) == ["grpo", "sft"]
    assert all(r.info.status == "FINISHED" for r in main)
    sweeps = {r.data.tags["sweep"] for r in main}
    assert sweeps == {str(tmp_path / "multi")}
    assert sorted(r.data.tags["sweep.job"] for r in main) == ["0", "1"]
    # grpo's SFT warm start is a third, child run, not a sweep job
    children = [r for r in everything if r.data.tags.get("workbench.stage") == "sft_base"]
    assert len(children) == 1 and "sweep" not in children[0].data.tags


def test_ddp_cpu_runs_sft_with_two_processes(tmp_path):
    env = cli_env(tmp_path)
    cmd = [python(), "-m", "workbench.train", "trainer=ddp_cpu", "method=sft", *FAST, "trainer.max_steps=6",
           "method.val_check_interval=3", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    client, main, everything = _main_runs(env["MLFLOW_TRACKING_URI"])
    assert len(everything) == 1 and main[0].info.status == "FINISHED"  # rank 1 creates no run
    assert main[0].data.params["trainer.devices"] == "2"
    steps = [m.step for m in client.get_metric_history(main[0].info.run_id, "train/loss")]
    assert sorted(steps) == list(range(6))
