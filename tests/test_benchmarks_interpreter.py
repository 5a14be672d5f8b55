"""benchmarks/interpreter.py runs on the CPU and writes its two tables: the switch-interval sweep and Gradio's work
per player message for the feed as a list of steps and as a text log (the measurement, not its figures, is tested
here: tests assert no wall-clock times)."""

from __future__ import annotations

import json

from benchmarks.interpreter import INTERVALS, answer_events, main


def test_the_interpreter_benchmark_writes_both_tables(tmp_path):
    assert main(["--out", str(tmp_path), "--calls", "50", "--repeats", "1"]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert [r["switch_interval_ms"] for r in result["switch"]] == [i * 1e3 for i in INTERVALS]
    assert all(r["alone_s"] > 0 and r["beside_busy_thread_s"] > 0 for r in result["switch"])
    feeds = {r["feed"]: r for r in result["messages"]}
    assert set(feeds) == {"list of steps (before)", "text log (now)"}
    assert all(r["steps"] == 256 and r["gradio_ms_per_message"] > 0 for r in feeds.values())
    # the same answer either way: the text log is no larger than the list it replaces
    assert feeds["text log (now)"]["value_bytes"] <= feeds["list of steps (before)"]["value_bytes"]
    assert "Gradio's Python per message" in (tmp_path / "summary.md").read_text()


def test_the_synthetic_answer_commits_one_token_per_step_in_blocks_of_four():
    events = answer_events(16, 4)
    assert len(events) == 16 and [e.final for e in events].count(True) == 4
    assert [e.block_state[e.committed[0]] for e in events] == list(range(100, 116))
