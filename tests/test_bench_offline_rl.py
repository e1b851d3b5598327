"""bench/offline_rl.py aggregates real control runs from an MLflow store into the CORL-style report: last / best /
held-out scores per (dataset, method) as mean ± std over seeds, the offline-to-online section, budgets and a plot."""

from __future__ import annotations

import statistics

import pytest

from conftest import load_bench
from workbench.train import run


def _bench():
    return load_bench("offline_rl")


def test_report_from_real_runs(fast_cfg, tmp_path):
    summaries = [run(fast_cfg("bc", [f"seed={s}"], run_dir=f"bc{s}")) for s in (0, 1)]
    summaries.append(run(fast_cfg("iql_online", ["method.online.start_step=3", "method.online.buffer_size=10"], run_dir="o2o")))
    bench = _bench()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rows = bench.collect(uri)
    assert sorted((r["method"], r["seed"]) for r in rows) == [("bc", 0), ("bc", 1), ("iql_online", 0)]
    bc = [r for r in rows if r["method"] == "bc"]
    for r, s in zip(sorted(bc, key=lambda r: r["seed"]), summaries):
        assert r["test"] == pytest.approx(s["metrics"]["test/normalized_score"], rel=1e-6)
        assert r["best"] == pytest.approx(s["metrics"]["val/best_normalized_score"], rel=1e-6)
        assert r["best"] >= r["last"]
    o2o = [r for r in rows if r["method"] == "iql_online"][0]
    assert o2o["offline_end"] == pytest.approx(summaries[2]["metrics"]["offline_end/normalized_score"], rel=1e-6)
    text = bench.write_report(rows, ["--db", uri], tmp_path / "report.md", None)
    last = [r["last"] for r in bc]
    assert f"{statistics.mean(last):.1f} ± {statistics.stdev(last):.1f}" in text
    assert "| pendulum_expert |" in text and "Offline-to-online" in text and "![" in text
    assert (tmp_path / "report.png").stat().st_size > 1000
