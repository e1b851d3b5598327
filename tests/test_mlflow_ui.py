"""The MLflow UI as a user sees it: two workbench runs logged to a tracking server, compared in a real browser.

The page is a React app that fetches runs after it loads, so only a browser that runs its JavaScript shows
whether workbench's runs, names and metrics reach the UI; headless Chromium renders it, and the test checks
the rendered DOM and keeps a screenshot in reports/.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from conftest import FAST, cli_env, python
from system_packages import ensure_debian_package, install_errors
from workbench import ROOT

SCREENSHOT = ROOT / "reports" / "mlflow_ui_compare_runs.png"  # rewritten only with WORKBENCH_UPDATE_SCREENSHOTS=1
SERVER_START_S = 60
# Virtual time lets the page's timers run ahead while the runs are fetched; a slow, shared machine may need more
RENDER_BUDGETS_MS = (15_000, 30_000, 60_000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {SERVER_START_S} s:\n{log.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    # the server forks uvicorn workers: signal the whole group it leads
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def chromium(browser: str, profile: Path, budget_ms: int, *args: str) -> subprocess.CompletedProcess:
    # own profile dir: concurrent browsers (xdist, other users) must not share one
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--window-size=1600,1000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=budget_ms / 1000 + 120)


def test_compare_runs_view_shows_both_workbench_runs(tmp_path):
    browser = ensure_debian_package("chromium", "chromium")
    if browser is None:
        pytest.skip(f"needs Debian's chromium, not installed and not installable: {install_errors.get('chromium')}")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    server_env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job-runner processes: not used here
    with open(log, "w") as out:
        server = subprocess.Popen(
            [str(Path(python()).parent / "mlflow"), "server",
             "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
             "--default-artifact-root", str(tmp_path / "artifacts"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=tmp_path, env=server_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(url, server, log)

        env = cli_env(tmp_path)
        env["MLFLOW_TRACKING_URI"] = url
        cmd = [python(), "-m", "workbench.train", "-m", "method=sft", "seed=0,1", *FAST,
               f"hydra.sweep.dir={tmp_path / 'multi'}"]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]

        client = mlflow.MlflowClient(url)
        exp = client.get_experiment_by_name("workbench")
        runs = client.search_runs([exp.experiment_id])
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
        names = sorted(r.info.run_name for r in runs)
        assert names == ["sft-arithmetic-tiny_llama-s0", "sft-arithmetic-tiny_llama-s1"]
        assert all("train/loss" in r.data.metrics for r in runs)

        # the route MLflow's own "Compare" button opens (Routes.getCompareRunPageRoute in the UI bundle)
        ids = [r.info.run_id for r in runs]
        page = f"{url}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([exp.experiment_id])}"
        expected = ["Comparing 2 Runs", *names, *ids, "train/loss"]
        for budget in RENDER_BUDGETS_MS:
            shown = chromium(browser, tmp_path / "profile", budget, "--dump-dom", page)
            missing = [s for s in expected if s not in shown.stdout]
            if not missing:
                break
        assert not missing, f"not in the rendered page after {budget} ms: {missing}\n{shown.stderr[-2000:]}"

        # a plain test run leaves the tracked README screenshot alone, so the tree stays clean
        target = SCREENSHOT if os.environ.get("WORKBENCH_UPDATE_SCREENSHOTS") == "1" else tmp_path / SCREENSHOT.name
        target.parent.mkdir(exist_ok=True)
        target.unlink(missing_ok=True)
        shot = chromium(browser, tmp_path / "profile", budget, f"--screenshot={target}", page)
        assert shot.returncode == 0 and target.stat().st_size > 20_000, shot.stderr[-2000:]  # a blank page is ~7 kB
    finally:
        stop(server)
