"""A study shared through PostgreSQL: a server started here (Debian's packages, on 127.0.0.1), two sweeper
processes on one Optuna study in it, and every MLflow run logged to it as well."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from conftest import FAST, cli_env, python
from system_packages import ensure_debian_package, install_errors

PG_DIRS = ("/usr/lib/postgresql/*/bin",)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    """The server refuses to run as root: as root, run its programs as Debian's postgres user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture
def postgres():
    initdb = ensure_debian_package("initdb", "postgresql", extra_dirs=PG_DIRS)
    if initdb is None:
        pytest.skip(f"PostgreSQL is not installed and could not be installed: {install_errors.get('postgresql', '')}")
    bindir = Path(initdb).resolve().parent  # the version's own bin folder: createdb and pg_ctl are beside initdb
    data = Path(tempfile.mkdtemp(prefix="workbench-pg-", dir="/tmp"))  # pytest's tmp_path is root-only (0700)
    os.chmod(data, 0o755)
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    run = lambda cmd: subprocess.run(_as_postgres(cmd), capture_output=True, text=True, timeout=120)
    done = run([str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres", "--no-sync"])
    assert done.returncode == 0, done.stderr[-2000:]
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100"
    done = run([str(bindir / "pg_ctl"), "-D", str(data / "db"), "-o", options, "-l", str(data / "server.log"), "-w", "start"])
    assert done.returncode == 0, done.stderr[-2000:] + (data / "server.log").read_text()[-2000:]
    try:
        for db in ("optuna", "mlflow"):
            done = run([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db])
            assert done.returncode == 0, done.stderr
        yield f"postgres@127.0.0.1:{port}"
    finally:
        run([str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "-w", "stop"])
        shutil.rmtree(data, ignore_errors=True)


def test_two_workers_share_a_postgres_study_and_log_to_postgres(postgres, tmp_path):
    storage = f"postgresql+psycopg2://{postgres}/optuna"
    env = cli_env(tmp_path)
    env["MLFLOW_TRACKING_URI"] = f"postgresql+psycopg2://{postgres}/mlflow"
    cmd = lambda name: [python(), "-m", "workbench.train", "-m", "hydra/sweeper=workbench_optuna", "method=sft", *FAST,
                        "method.lr=tag(log, interval(1e-4, 1e-2))", "hydra.sweeper.n_trials=4",
                        f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=shared",
                        f"hydra.sweep.dir={tmp_path / name}"]
    workers = [subprocess.Popen(cmd(f"w{i}"), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True) for i in range(2)]
    errors = [w.communicate(timeout=500)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], errors[0][-2000:] + errors[1][-2000:]

    study = optuna.load_study(study_name="shared", storage=storage)
    assert 4 <= len(study.trials) <= 5 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both workers ran trials of the one study

    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("workbench").experiment_id])
    trial_runs = [r for r in runs if r.data.tags.get("workbench.stage") == "trial"]
    seed_runs = [r for r in runs if r.data.tags.get("workbench.stage") == "main"]
    assert sorted(int(r.data.tags["optuna.trial"]) for r in trial_runs) == sorted(t.number for t in study.trials)
    assert {r.data.tags["mlflow.parentRunId"] for r in seed_runs} == {r.info.run_id for r in trial_runs}
    assert all(r.info.status == "FINISHED" and "train/loss" in r.data.metrics for r in seed_runs)
    assert [r.data.tags["optuna.trial"] for r in trial_runs if r.data.tags.get("optuna.best") == "true"] == [
        str(study.best_trial.number)]
