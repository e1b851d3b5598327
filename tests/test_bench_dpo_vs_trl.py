"""Smoke test of bench/dpo_vs_trl.py: every side runs one timed step at a tiny size and the report is written.

No timing is asserted; only that each side produced a finite step time, that all sides saw the same token ids (the
script raises otherwise), that they computed the same warm-up losses from the same start weights, and that the
tables made it into the file.
"""

from __future__ import annotations

import math

import pytest

from conftest import load_bench

pytest.importorskip("trl", reason="TRL is the reference implementation; install the test extra")

TINY = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1", "model.num_heads=2",
        "model.num_kv_heads=1", "task.train_size=64", "task.val_size=8", "task.test_size=8"]


def _bench():
    return load_bench("dpo_vs_trl")


def test_make_pairs_lengths():
    bench = _bench()
    rows = bench.make_pairs(8, 10, 6, seed=3)
    assert len(rows) == 8
    for r in rows:
        assert 5 <= len(r["prompt"]) <= 10 and r["prompt"].isdigit()
        for key in ("chosen", "rejected"):  # + EOS: 3..6 tokens
            assert 2 <= len(r[key]) <= 5 and r[key].isdigit()
    assert bench.make_pairs(8, 10, 6, seed=3) == rows


def test_all_sides_step_and_report_is_written(tmp_path):
    bench = _bench()
    out = tmp_path / "report.md"
    results = bench.main(["--repeats", "1", "--steps", "1", "--warmup", "2", "--threads", "1",
                          "--settings", "2x6x5", "--override", *TINY, "--out", str(out)])
    (r,) = results
    assert set(r["sides"]) == {"workbench default", "workbench no_shared_prefix", "workbench precomputed",
                               "workbench no_shared_prefix_precomputed", "TRL", "TRL precomputed ref"}
    for side in r["sides"].values():
        assert len(side["records"]) == 1
        assert math.isfinite(side["median"]["step"]) and side["median"]["step"] > 0
    assert [c["trl"] for c in r["comparisons"]] == ["TRL", "TRL", "TRL precomputed ref", "TRL precomputed ref"]
    assert all(math.isfinite(c["ratio"]) for c in r["comparisons"])
    # same weights, same pairs: log 2 at the first step everywhere, and the same loss after one AdamW step
    warm = r["warmup_losses"]
    for losses in warm.values():
        assert losses[0] == pytest.approx(math.log(2), abs=1e-6)
        assert losses[1] == pytest.approx(warm["TRL"][1], abs=1e-5)
    text = out.read_text()
    assert "| 2x6x5@1t |" in text
    assert "workbench >= 1.2x faster than TRL" in text
    assert "## Same loss" in text
