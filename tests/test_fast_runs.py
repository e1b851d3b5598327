"""Every method does a short end-to-end run through train.run, and its MLflow record reads back."""

import json

import mlflow
import pytest

from workbench.train import run


@pytest.mark.parametrize("method", ["sft", "grpo"])
def test_method_fast_run(fast_cfg, method, tmp_path):
    summary = run(fast_cfg(method))
    m = summary["metrics"]
    assert m["steps"] == 4
    assert 0.0 <= m["test/accuracy"] <= 1.0 and 0.0 <= m["test_before/accuracy"] <= 1.0
    assert (tmp_path / "run" / "summary.json").is_file()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["mlflow_run_id"] == summary["mlflow_run_id"]
