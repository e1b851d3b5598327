"""Hydra launchers: parallel local jobs (joblib), submitit's local executor, and the SLURM config.

SLURM itself cannot run here; its test drives the real submitit plugin up to the sbatch call, with a stand-in
sbatch that keeps the job script and refuses the submission.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import mlflow
import pytest
from hydra import compose, initialize_config_dir

from conftest import CONF_DIR, FAST, cli_env, python

# Every job logs one line through Hydra's job logging when it ends, from the process that ran it, with its pid.
PID_LOGGING = [
    "hydra.job_logging.formatters.simple.format='pid=%(process)d %(name)s %(message)s'",
    "+hydra.callbacks.log_return._target_=hydra.experimental.callbacks.LogJobReturnCallback",
]


def run_sweep(tmp_path: Path, launcher: list[str], timeout: int = 300) -> tuple[int, Path]:
    env = cli_env(tmp_path)  # a fresh tracking store: the parallel jobs' first use of it must not collide
    sweep = tmp_path / "multi"
    cmd = [python(), "-m", "workbench.train", "-m", *launcher, "method=sft", "seed=0,1", *FAST, *PID_LOGGING,
           f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    return proc.pid, sweep


def finished_sweep_runs(tmp_path: Path, sweep: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("workbench").experiment_id])
    assert len(runs) == 2
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["sweep"] for r in runs} == {str(sweep)}
    assert sorted(r.data.tags["sweep.job"] for r in runs) == ["0", "1"]
    assert sorted(r.data.tags["workbench.seed"] for r in runs) == ["0", "1"]
    return runs


def job_pids(sweep: Path) -> dict[str, int]:
    """pid of the process that ran each job, from the line the job logged when it ended."""
    pids = {}
    for job_dir in sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")):
        ended = re.findall(r"^pid=(\d+) hydra\.experimental\.callbacks\.LogJobReturnCallback Succeeded",
                           (job_dir / "train.log").read_text(), flags=re.M)
        assert len(ended) == 1, f"{job_dir.name}: no end-of-job line in its log"
        pids[job_dir.name] = int(ended[0])
    assert sorted(pids) == ["0-sft-s0", "1-sft-s1"]
    return pids


def test_joblib_runs_the_jobs_of_a_multirun_in_two_worker_processes(tmp_path):
    main_pid, sweep = run_sweep(tmp_path, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    finished_sweep_runs(tmp_path, sweep)
    pids = job_pids(sweep)
    # Hydra's default launcher runs every job inside the main process, one after another: one pid, main_pid
    assert len(set(pids.values())) == 2, pids
    assert main_pid not in pids.values()


@pytest.mark.slow
def test_submitit_local_runs_each_job_in_its_own_process(tmp_path):
    main_pid, sweep = run_sweep(tmp_path, ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"])
    finished_sweep_runs(tmp_path, sweep)
    pids = job_pids(sweep)
    assert len(set(pids.values())) == 2 and main_pid not in pids.values(), pids
    assert (sweep / ".submitit").is_dir()  # submitit's job folder: pickled job, its stdout/stderr and result


def test_slurm_config_composes_with_the_documented_values():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.timeout_min, launcher.cpus_per_task, launcher.gpus_per_node, launcher.mem_gb) == (240, 4, None, 16)
    assert launcher.partition is None and launcher.array_parallelism == 16 and launcher.setup is None


def test_slurm_launcher_writes_the_sbatch_script_we_document(tmp_path):
    """The real plugin, up to sbatch: the script it would submit carries our resources and the user's partition."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    captured = tmp_path / "submitted.sh"
    fake = bin_dir / "sbatch"
    fake.write_text(f'#!/bin/sh\ncp "$1" "{captured}"\necho "stand-in sbatch: no SLURM on this machine" >&2\nexit 1\n')
    fake.chmod(0o755)
    srun = bin_dir / "srun"  # submitit looks for it on PATH to tell it is on a SLURM machine; never run here
    srun.write_text("#!/bin/sh\nexit 1\n")
    srun.chmod(0o755)
    env = cli_env(tmp_path)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    cmd = [python(), "-m", "workbench.train", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu-short",
           "method=sft", "seed=range(17)", *FAST, f"hydra.sweep.dir={tmp_path / 'multi'}"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "stand-in sbatch" in done.stderr, done.stderr[-3000:]
    script = captured.read_text()
    for line in ("#SBATCH --partition=gpu-short", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16GB",
                 "#SBATCH --time=240",
                 "#SBATCH --array=0-16%16"):  # 17 jobs: submitit lowers the %limit to the array size
        assert line in script, f"{line!r} not in\n{script}"
    assert "--gpus-per-node" not in script
