"""benchmarks/joining.py on the CPU (the tiny shape, a few tokens): every visitor of every setting is answered with
its whole answer, each setting and the lone visitors get their row, and the files are written."""

from __future__ import annotations

import json

from benchmarks import joining


def test_the_joining_bench_answers_every_visitor_and_writes_its_rows(tmp_path):
    out = tmp_path / "join"
    joining.main(
        ["--arch", "tiny", "--out", str(out), "--visitors", "3", "--gaps", "0.01", "--widths", "1", "2"]
        + ["--new-tokens", "8", "--block", "4", "--steps", "2"]
    )
    results = json.loads((out / "results.json").read_text())
    settings = [r["setting"] for r in results["rows"]]
    assert settings == ["next batch", "alone, width 1", "join, width 1", "alone, width 2", "join, width 2"]
    for row in results["rows"]:
        assert row["answered"] == row["visitors"] and row["makespan_s"] > 0
        assert 1 <= row["decodes"] <= row["visitors"]
    streams = [v for v in results["visitors"] if not v["setting"].startswith("alone")]
    assert len(streams) == 9 and all(v["tokens"] == 8 and v["ended"] >= v["started"] for v in streams)
    assert (out / "summary.md").read_text().count("\n| ") == 6  # the header and five rows
