"""Smoke test of bench/grpo_vs_trl.py: both loops run one timed step at a tiny size and the report is written.

No timing is asserted; only that each side produced a finite step time and the table made it into the file.
"""

from __future__ import annotations

import math

import pytest

from conftest import load_bench

pytest.importorskip("trl", reason="TRL is the reference implementation; install the test extra")

TINY = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1", "model.num_heads=2",
        "model.num_kv_heads=1", "task.train_size=256", "task.val_size=8", "task.test_size=8"]


def _bench():
    return load_bench("grpo_vs_trl")


def test_both_loops_step_and_report_is_written(tmp_path):
    bench = _bench()
    out = tmp_path / "report.md"
    results = bench.main(["--repeats", "1", "--steps", "1", "--warmup", "0", "--threads", "1",
                          "--settings", "2x2x3", "--override", *TINY, "--out", str(out)])
    (r,) = results
    assert len(r["workbench"]) == 1 and len(r["trl"]) == 1
    for side in ("workbench_median", "trl_median"):
        assert math.isfinite(r[side]["step"]) and r[side]["step"] > 0
        assert 1 <= r[side]["length"] <= 3
    assert math.isfinite(r["ratio"])
    text = out.read_text()
    assert "| 2x2x3@1t |" in text
    assert "workbench >= 1.5x faster than TRL" in text
