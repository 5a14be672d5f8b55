"""benchmarks/studio.py's crowd sweep on the CPU: N visitors, each its own gradio_client, press Send together against
a launched studio (the test checkpoints); every one is answered, with the tokens/s, bytes and batch the page reports,
and the summary's aggregate is their tokens over the makespan."""

from __future__ import annotations

from argparse import Namespace

import pytest
import torch


@pytest.fixture(scope="module")
def studio_url(launched_studio):
    return launched_studio


def test_streamed_bytes_count_each_outputs_changes_once():
    from benchmarks.studio import streamed_bytes

    a = ({"steps": [1]}, "x")
    b = ({"steps": [1, 2]}, "x")
    first = len('[{"steps": [1]}, "x"]')
    assert streamed_bytes([a]) == first
    assert streamed_bytes([a, b]) == first + len('[[["add", ["steps", 1], 2]], []]')  # only the new step


def test_a_crowd_on_the_cpu_is_answered_and_summarised(studio_url, caplog):
    import logging

    from benchmarks.studio import SETTINGS, crowd_rows, crowd_summary, served_timelines

    url, sdar = studio_url
    with caplog.at_level(logging.INFO, logger="app.chat"):
        visitors = crowd_rows(url, sdar, Namespace(crowd=[1, 3], new_tokens=8, clients=["gradio", "http"]))
    served = served_timelines([r.getMessage() for r in caplog.records])
    assert len(served) == len(visitors)  # the server's account of each answer, parsed by the benchmark
    assert sorted(t["tokens"] for t in served) == sorted(v.tokens for v in visitors)
    for t in served:
        assert (
            0 <= t["waited_s"]
            and 0 < t["decoded_s"]
            and t["waited_s"] + t["decoded_s"] <= t["answered_s"] + 0.002
        )  # 3 decimals each
        assert t["messages"] >= 1 and 0 < t["first_message_s"] <= t["answered_s"]
        assert 0 <= t["in_gradio_s"] <= t["answered_s"]
    # two rounds of each size and setting, for each kind of client
    assert len(visitors) == 2 * len(SETTINGS) * 2 * (1 + 3)
    assert all(v.error is None for v in visitors), [v.error for v in visitors if v.error]
    for v in visitors:
        assert 1 <= v.tokens <= 8 and v.page_tps > 0 and v.first_output_s <= v.first_token_s <= v.wall_s
        assert v.outputs >= 2  # the request's first state, then at least the answer
        assert 0 < v.bytes < 100_000 and 1 <= v.batch <= v.crowd
    # the plain-HTTP visitor reads the same answers as gradio_client's: the same outputs rebuilt from the diffs
    by_client = {
        k: sorted((v.setting, v.crowd, v.round, v.visitor, v.tokens) for v in visitors if v.client == k)
        for k in ("gradio", "http")
    }
    assert by_client["gradio"] == by_client["http"]
    engine = {(s.name, n): {"tokens_per_s": 100.0, "seconds": 0.1} for s in SETTINGS for n in (1, 3)}
    rows = crowd_summary(visitors, engine)
    assert len(rows) == 2 * len(SETTINGS) * 2 * 2
    for r in rows:
        group = [
            v
            for v in visitors
            if (v.client, v.setting, v.crowd, v.round)
            == (r["client"], r["setting"], r["visitors"], r["round"])
        ]
        assert r["answered"] == len(group) and r["makespan_s"] == max(v.wall_s for v in group)
        assert r["aggregate_tps"] == pytest.approx(sum(v.tokens for v in group) / r["makespan_s"])
        assert r["aggregate_over_engine"] == pytest.approx(r["aggregate_tps"] / 100.0)


def test_the_crowd_bench_runs_end_to_end_on_the_cpu_with_tiny_models(tmp_path):
    """`python -m benchmarks.studio --arch tiny --crowd-only`: random tiny checkpoints, the studio started as a
    process, a crowd of 2 per setting, and the three result files, with the server's own account of each answer."""
    import csv
    import json

    from benchmarks.studio import SETTINGS, main

    from helpers import free_port

    out = tmp_path / "out"
    argv = [
        "--arch",
        "tiny",
        "--workdir",
        str(tmp_path / "work"),
        "--out",
        str(out),
        "--crowd",
        "2",
        "--crowd-only",
        "--repeats",
        "1",
        "--new-tokens",
        "8",
        "--port",
        str(free_port()),
    ]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    crowd = results["crowd"]
    assert {(c["client"], c["setting"], c["visitors"], c["round"]) for c in crowd} == {
        (k, s.name, 2, r) for k in ("gradio", "http") for s in SETTINGS for r in (1, 2)
    }
    assert all(c["answered"] == 2 and c["errors"] == 0 and c["engine_batch_tps"] > 0 for c in crowd)
    visitors = list(csv.DictReader(open(out / "crowd.csv")))
    assert len(visitors) == 2 * len(SETTINGS) * 2 * 2 and not any(v["error"] for v in visitors)
    # the plain-HTTP probes: 3 per setting, each answered, its messages in the order the queue sends them
    probes = results["info"]["probes"]
    assert len(probes) == len(SETTINGS) * 3 and not any("error" in p for p in probes)
    for p in probes:
        assert 0 < p["queue_answered"] <= p["stream_open"] <= p["first_process_starts"]
        assert p["first_process_starts"] <= p["first_process_generating"] <= p["completed"]
        assert p["first_process_completed"] == p["completed"] and p["messages"] >= 3
    served = results["info"]["served"]
    assert len(served) == len(visitors) + len(probes) and all(t["decoded_s"] > 0 for t in served)
    summary = (out / "summary.md").read_text()
    assert "| probe (plain HTTP) |" in summary
    # Gradio's own per-request phases: every chat answer (the crowd's and the probes') has a trace
    traces = [t for t in results["info"]["gradio_traces"] if t["fn_name"] == "chat"]
    assert len(traces) >= len(served) and all(t["total_ms"] > 0 for t in traces)
    assert "| chat |" in summary
    assert "Server side, 22 chat answers" in summary and "first message sent p50" in summary
    assert "The studio's interpreter was held longer than" in summary  # the stall watch ran in the studio
    assert "stall watch on" in (out / "server.log").read_text()


def test_a_lone_visitors_time_is_split_by_the_served_line_logged_during_it():
    from benchmarks.studio import Visitor, split_lone_visitors

    served = (
        "app.chat: served a chat answer: 256 tokens, waited 0.000 s for the device, decoded in 0.220 s (batch 1), "
        "answered 0.250 s after the request; 5 messages before the answer, the first at 0.011 s, 0.020 s in Gradio "
        "between them"
    )
    alone = Visitor(1, "static b16/4", 1, 1, wall_s=4.0, submitted_at=100.0, ended_at=104.0)
    crowd = Visitor(2, "static b16/4", 1, 1, wall_s=1.0, submitted_at=100.0, ended_at=101.0)
    lines = [
        (99.0, served.replace("0.250", "9.000")),
        (103.5, served),
        (103.6, "other"),
    ]  # the first is earlier
    split_lone_visitors([alone, crowd], lines)
    assert alone.server_s == 0.25
    assert abs(alone.before_handler_s - 3.25) < 1e-9 and abs(alone.after_answer_s - 0.5) < 1e-9
    assert crowd.server_s is None  # a crowd's answers cannot be told apart by time


def test_a_sigterm_ends_the_bench_through_its_finally_blocks():
    """`timeout` sends SIGTERM: the bench must leave through its `finally` (which stops the studio it started), not
    die on the spot."""
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import os, signal, time\n"
        "from benchmarks.studio import exit_on_sigterm\n"
        "exit_on_sigterm()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "finally:\n"
        "    print('studio stopped', flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 143 and "studio stopped" in done.stdout, (done.returncode, done.stderr[-2000:])


def test_the_third_turns_engine_figure_is_taken_on_the_third_turns_own_prompt(tmp_path):
    """The studio's 3rd chat turn is compared with `generate` on the same conversation (its prompt holds the two
    earlier answers), not with the first turn's shorter prompt."""
    from benchmarks.studio import FOLLOW_UPS, MESSAGE, third_turn_ids, write_checkpoints
    from sdar_core import load_pretrained
    from sdar_core.prompting import stop_ids_for

    sdar, _ = write_checkpoints("tiny", tmp_path, torch.device("cpu"), torch.float32)
    model, tok = load_pretrained(str(sdar))
    ids = third_turn_ids(model, tok, stop_ids_for(tok, model.config), 8)
    text = tok.decode(ids)
    assert text.index(MESSAGE) < text.index(FOLLOW_UPS[0]) < text.index(FOLLOW_UPS[1])
    assert text.count("<|im_start|>assistant") == 3  # two answers kept, the third turn's opener last
    first = tok.apply_chat_template([{"role": "user", "content": MESSAGE}], add_generation_prompt=True)
    assert len(ids) > len(first) + 8
