"""benchmarks/entropy_path.py's interleaved timing: every mode once per round, in an order rotated by one
per round, on the same inputs in one process, and the time ratios taken within each round (times are
measured, never asserted: these tests check the bookkeeping on a tiny config)."""

from __future__ import annotations

from typing import Any

import pytest
from committed_runs import load_benchmark

MODES = ["reference", "fused", "fused_loss"]


def _tiny(**over: Any) -> dict[str, Any]:
    cfg = {"n": 48, "v": 300, "d": 16, "dtype": "fp32", "chunk": 16, "trl_tile": 128, "threads": 1}
    return {**cfg, "device": "cpu", **over}


def test_rounds_rotate_every_mode_and_the_matmuls_through_each_place() -> None:
    bench = load_benchmark("entropy_path")
    rec = bench.run_interleaved(_tiny(modes=MODES, rounds=4))
    names = [*MODES, "matmuls"]
    assert rec["orders"] == [names[r:] + names[:r] for r in range(4)]
    assert set(rec["times_s"]) == set(names)
    assert all(len(t) == 4 and all(x > 0 for x in t) for t in rec["times_s"].values())
    ratios = bench.round_ratios(rec, "fused")
    assert ratios == [
        f / r for f, r in zip(rec["times_s"]["fused"], rec["times_s"]["reference"], strict=True)
    ]


def test_the_table_takes_interleaved_times_where_a_config_has_them_and_marks_the_others() -> None:
    bench = load_benchmark("entropy_path")
    conditions = {
        "torch": "t", "python": "p", "device": "cpu", "cpu": "c", "cpu_count": 2, "threads": 2,
        "hidden_size": 16, "chunk_size": 16, "memory": "rss", "budget_gb": 12, "repeats": 0,
        "big_repeats": 0, "rounds": 2,
    }  # fmt: skip

    def row(mode: str, n: int, t: float) -> dict[str, Any]:
        return {"mode": mode, "n": n, "v": 300, "dtype": "fp32", "status": "ok", "peak_bytes": 2.0**30,
                "time_s": t, "ratio_to_matmul": 2.0, "time_includes_warmup": True}  # fmt: skip

    results = [
        row("reference", 48, 9.0),
        row("fused", 48, 1.0),
        row("reference", 96, 4.0),
        row("fused", 96, 2.0),
    ]
    rec = {"n": 48, "v": 300, "dtype": "fp32", "modes": ["reference", "fused"], "rounds": 2,
           "times_s": {"reference": [2.0, 4.0], "fused": [3.0, 4.0], "matmuls": [1.0, 1.0]}}  # fmt: skip
    table = bench.render_markdown(conditions, results, [rec])
    lines = {
        tuple(c.strip() for c in ln.split("|")[1:5]): ln for ln in table.splitlines() if ln.startswith("| 4")
    }
    lines |= {
        tuple(c.strip() for c in ln.split("|")[1:5]): ln for ln in table.splitlines() if ln.startswith("| 9")
    }
    # N = 48: the rounds' medians (3.0, 3.5) and the per-round ratios 1.5 and 1.0, not 1.0 / 9.0
    assert "| 3.50 | 3.50 |" in lines[("48", "300", "fp32", "fused")]
    assert "1.25 (1.00–1.50)" in lines[("48", "300", "fp32", "fused")]
    # N = 96 has no rounds: its own processes' times, marked sequential, with the footnote of a warm-up time
    assert "0.50 (seq.)" in lines[("96", "300", "fp32", "fused")]
    assert "2.00* (seq.)" in lines[("96", "300", "fp32", "fused")]
    assert "one run only" in table
    with pytest.raises(ValueError, match="unknown mode"):
        bench.run_interleaved(_tiny(modes=["nope"], rounds=1))
