"""The README's default experiment, end to end, exactly as `make run` runs it (slow: about 3 minutes).

Whether RL beats its SFT start is a measured result (bench/default_experiment.py, reports/), not an
assertion here: this test checks that the whole path runs and records what it should.
"""

import json
import subprocess

import mlflow
import pytest
from omegaconf import OmegaConf

from conftest import cli_env, python
from workbench import ROOT


@pytest.mark.slow
def test_default_experiment_runs_end_to_end(tmp_path):
    env = cli_env(tmp_path)
    done = subprocess.run([python(), "-m", "workbench.train", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "grpo" and summary["task"] == "arithmetic" and summary["seed"] == 0
    m = summary["metrics"]
    assert 0.0 <= m["test_before/accuracy"] <= 1.0 and 0.0 <= m["test/accuracy"] <= 1.0
    assert m["test_before/accuracy"] > 0.0, "the SFT warm start learned nothing"
    assert m["steps"] == OmegaConf.load(ROOT / "conf" / "method" / "grpo.yaml").max_steps
    # the closing table names the run and how to open the UI
    assert summary["mlflow_run_id"] in done.stdout and "mlflow ui --backend-store-uri" in done.stdout
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    base = client.get_run(run.data.tags["workbench.sft_base_run_id"])
    assert base.data.tags["workbench.stage"] == "sft_base" and base.info.status == "FINISHED"
