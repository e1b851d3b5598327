"""bench/model_step_cost.py reads its two runs' step times from MLflow (step 1 left out) and the claims' minutes from
reports/README.md. The SmolLM2 job itself takes minutes, so it is not run here; the measurement is in reports/."""

from __future__ import annotations

import mlflow
from mlflow.entities import Metric

from conftest import load_bench
from workbench import ROOT


def _bench():
    return load_bench("model_step_cost")


def test_step_time_is_the_median_after_the_first_step(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("workbench")
    for model, times in (("tiny_llama", [9.0, 0.2, 0.1, 0.3]), ("smollm2_135m", [60.0, 20.0, 22.0, 21.0])):
        run = client.create_run(exp, tags={"workbench.stage": "main", "workbench.model": model})
        metrics = [Metric("train/step_time", t, 0, step) for step, t in enumerate(times)]
        metrics += [Metric("train/tokens_per_s", 100.0 * step, 0, step) for step in range(4)]
        metrics += [Metric("train/completion_length", 6.0, 0, step) for step in range(4)]
        client.log_batch(run.info.run_id, metrics=metrics)
        client.set_terminated(run.info.run_id)
    sft = client.create_run(exp, tags={"workbench.stage": "sft_base", "workbench.model": "tiny_llama"})  # not a main run
    client.set_terminated(sft.info.run_id)
    found = _bench().measure(uri)
    assert found["tiny_llama"]["step_s"] == 0.2 and found["smollm2_135m"]["step_s"] == 21.0
    assert found["tiny_llama"]["steps"] == 3 and found["tiny_llama"]["tokens_per_s"] == 200.0


def test_claim_minutes_are_read_from_the_index(tmp_path):
    index = tmp_path / "README.md"
    index.write_text("| # | claim | verdict | compute (2 cores) | report |\n|---|---|---|---|---|\n"
                     "| 1 | A | **reproduced** | 48 min | [a.md](a.md) |\n| 2 | B | **inconclusive** | 9.5 min | [b.md](b.md) |\n"
                     "- [other.md](other.md): 3 min |\n")
    bench = _bench()
    assert bench.claim_minutes(index) == [48.0, 9.5]
    assert bench.claim_minutes(tmp_path / "missing.md") == []
    assert len(bench.claim_minutes(ROOT / "reports" / "README.md")) == 12
