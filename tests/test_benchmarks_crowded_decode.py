"""benchmarks/crowded_decode.py on the CPU (tiny model): every setting, decoder variant and neighbour measured and
tabled (the measurement, not its figures, is tested: tests assert no wall-clock times)."""

from __future__ import annotations

import json
import sys

from benchmarks.crowded_decode import NEIGHBOURS, SETTINGS, VARIANTS, Neighbour, main


def test_the_crowded_decode_benchmark_measures_every_setting_beside_every_neighbour(tmp_path):
    switch = sys.getswitchinterval()
    assert main(["--arch", "tiny", "--out", str(tmp_path), "--new-tokens", "8", "--repeats", "1"]) == 0
    # the interpreter's interval is given back (to the microsecond CPython keeps it in: setting 0.0002 back stores
    # 199 us, 0.0002 * 1e6 truncated, when a test before this one in the process had set it)
    assert abs(sys.getswitchinterval() - switch) <= 1.01e-6
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    # every variant of every setting, but reading each block only where the decode could read ahead: the static
    # schedules ("static b16/4", "ar" on SDAR weights), not the dynamic one nor the AR twin's next-token decoder
    pairs = {(s, v) for s, _, _ in SETTINGS for v in ("default", "op by op")}
    pairs |= {("static b16/4", "read each block"), ("ar", "read each block")}
    assert {v for v, _, _ in VARIANTS} == {"default", "op by op", "read each block"}
    assert len(rows) == len(pairs) * len(NEIGHBOURS)
    assert {(r["setting"], r["variant"], r["neighbour"]) for r in rows} == {
        (s, v, n) for s, v in pairs for n in NEIGHBOURS
    }
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert all(r["over_alone"] == 1.0 for r in rows if r["neighbour"] == "alone")
    table = (tmp_path / "summary.md").read_text()
    assert table.count("\n") == 2 + len(pairs) and "beside a fifth busy" in table


def test_a_neighbour_runs_python_while_it_is_entered_and_stops_after():
    import threading

    before = threading.active_count()
    with Neighbour("a fifth busy") as n:
        assert n.thread.is_alive() and threading.active_count() == before + 1
    assert not n.thread.is_alive()
    with Neighbour("alone") as n:
        assert n.thread is None
