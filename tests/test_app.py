"""`python app.py` as a user starts it: no --model, no GPU, no network. It must open the embedded sdar-tiny,
say where it is serving, and answer the arithmetic it was trained on (greedy, the UI's default settings)
with more than one token per forward; the race must take ar-tiny as the AR twin."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from app.feed import expand
from sdar_core.paths import REPO

from helpers import free_port, text_of

pytestmark = pytest.mark.skipif(
    not (REPO / "assets" / "models" / "sdar-tiny" / "config.json").is_file(),
    reason="the embedded model assets/models/sdar-tiny is not in this checkout",
)


@pytest.fixture(scope="module")
def app_process(tmp_path_factory):
    """`python app.py --port P` in a subprocess, offline and CPU-only; yields (url, log file)."""
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("SDAR_MODEL", None)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.time() + 120
        while "is running at" not in log.read_text():
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"app.py did not start (exit code {proc.poll()}):\n{log.read_text()}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/", log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_startup_log_names_the_model_and_the_url_without_warnings_or_tracebacks(app_process):
    url, log = app_process
    text = log.read_text()
    assert re.search(r"model sdar-tiny loaded in [\d.]+ s \(cpu, float32\)", text), text
    assert f"SDAR Studio is running at {url}" in text
    assert "Traceback" not in text and "not loaded" not in text, text
    assert (
        "instantiate a model of type" not in text
    )  # transformers' expected complaint about `sdar` is filtered


def test_default_app_answers_47_plus_38_with_85_and_tpf_above_one(app_process):
    from gradio_client import Client

    url, _ = app_process
    client = Client(url, verbose=False)
    info = client.predict("assets/models/sdar-tiny", api_name="/describe_model")
    assert "sdar-tiny" in info and "block size **4**" in info and "device **cpu**" in info
    # Every other input at the UI's defaults: the model box (sdar-tiny), block 16, steps 16, dynamic 0.99, greedy.
    chatbot, _, live, stats, note = client.predict(message="What is 47 + 38?", api_name="/chat")
    live = expand(live)
    answer = text_of(chatbot[-1])
    assert "85" in answer and "Answer: 85" in answer, answer
    assert "`dynamic`, block 16, steps 16" in stats
    tpf = float(re.search(r"\*\*TPF\*\* ([\d.]+)", stats).group(1))
    assert tpf > 1.5, stats  # several tokens per forward on the arithmetic it was trained on
    assert (
        live["status"] == "done" and live["steps"] and live["pace"] == 120
    )  # the page replays it at 120 ms a frame

    lane_ar, lane_sdar, lane_twin, table, speedup, chart = client.predict(
        api_name="/race"
    )  # the default prompt
    assert (
        "AR twin (ar-tiny)" in lane_twin and "done (run 3 of 3):" in lane_twin and "median of 3" in lane_twin
    )
    runs = {r[0]: dict(zip(table["headers"], r)) for r in table["data"]}
    assert [runs["AR (sdar-tiny)"][c] for c in ("strategy", "block", "steps", "TPF")] == ["ar", 1, 1, 1.0]
    sdar = runs["SDAR (sdar-tiny)"]
    assert [sdar[c] for c in ("strategy", "block", "steps")] == ["dynamic", 16, 16] and sdar["TPF"] > 1.5
    assert runs["AR twin (ar-tiny)"]["strategy"] == "ar"
    assert all(r["timed runs"] == 3 for r in runs.values())
    lo, hi = map(float, sdar["tokens/s (min–max)"].split("–"))
    assert lo <= sdar["tokens/s (median)"] <= hi
    assert (
        "SDAR vs AR on the same weights" in speedup and "median of 3 runs" in speedup and "AR twin" in speedup
    )
    plot = json.loads(chart["plot"])
    bars = [t for t in plot["data"] if t["type"] == "bar"]
    assert [t["name"] for t in bars] == ["tokens/s", "forwards"] and bars[1]["x"] == list(runs)


def test_default_sweep_covers_blocks_4_8_16_and_four_thresholds_with_the_answers_shown(app_process):
    from gradio_client import Client

    client = Client(app_process[0], verbose=False)
    note, tpf, speed, table = client.predict(
        api_name="/sweep"
    )  # the accordion's defaults, on the race prompt
    cols = table["headers"]
    rows = [dict(zip(cols, r)) for r in table["data"]]
    assert rows[0]["block length"] == 1 and rows[0]["TPF"] == 1.0  # AR first
    assert [(r["block length"], r["threshold"]) for r in rows[1:]] == [
        (b, t) for b in (4, 8, 16) for t in (0.7, 0.8, 0.9, 0.95)
    ]
    trained = [r for r in rows[1:] if r["block length"] == 4]  # the block size sdar-tiny was trained with
    assert all(r["answer ends"] == "Answer: 85" and r["TPF"] > 1.5 for r in trained), trained
