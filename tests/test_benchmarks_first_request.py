"""benchmarks/first_request.py on the CPU (tiny arch): every block size, schedule and prompt length has a first and
a warm decode, their ratio, and the two result files. (Its timings say nothing about a GPU, where the first decode
of a shape captures graphs.)"""

from __future__ import annotations

import json

from benchmarks.first_request import STRATEGIES, main, prompt_lengths


def test_first_request_bench_writes_a_row_per_block_schedule_and_prompt(tmp_path):
    out = tmp_path / "out"
    assert main(["--arch", "tiny", "--blocks", "4", "8", "--new-tokens", "8", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert [(r["block"], r["strategy"], r["prompt"]) for r in rows] == [
        (L, s, n) for L in (4, 8) for s in STRATEGIES for n in prompt_lengths(L)
    ]
    for r in rows:
        assert r["first_tps"] > 0 and r["warm_tps"] > 0
        assert r["first_over_warm"] == r["first_tps"] / r["warm_tps"]
    assert results["static_prefill"] is False and results["warm_up_s"] >= 0
    assert "| 8 | dynamic | 17 |" in (out / "summary.md").read_text()  # two whole blocks and a token
