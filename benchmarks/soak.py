"""A soak of the studio: N visitors use `python app.py` (a subprocess, the embedded model, the CPU) through its public
API for a while, and the server's resident memory is sampled all along.

    python -m benchmarks.soak --visitors 8 --minutes 10 --out benchmarks/results/soak

Each visitor is a gradio_client that chats (a new conversation each turn, 8-32 new tokens), now and then decodes a
prompt in the visualizer, reads a model's card and clears; every 10th turn it comes back as a new browser session
(a new Client), so per-session state is exercised as well as decoding. Reported: turns, failures (each one named),
latency percentiles per kind, and the server's RSS at start (the model loaded, before any visitor), after the
warm-up (the first fifth of the run) and at the end, with the growth over the last half of the run: flat memory
means that growth stays within a few percent. Writes <out>/soak.json (figures) and <out>/rss.csv (the samples).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "What is 47 + 38?",
    "How many minutes are in 5 hours?",
    "What is 305 - 178?",
    "What comes next: 3, 7, 11, 15, 19, ?",
    "What is 12 * 9?",
    "Convert 3 km to meters.",
]
SESSION_TURNS = 10  # a visitor comes back as a new session after this many turns


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    sessions: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.latencies.setdefault(kind, []).append(seconds)

    def fail(self, text: str) -> None:
        with self.lock:
            self.failures.append(text[:300])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_studio(port: int, log_path: Path) -> subprocess.Popen:
    """`python app.py` on a loopback port, its log in `log_path`; returns once it answers."""
    import httpx

    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    server = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the studio exited ({server.returncode}); see {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise RuntimeError("the studio did not answer within 180 s")


def visit(
    url: str,
    model: str,
    index: int,
    deadline: float,
    tally: Tally,
    session_turns: int = SESSION_TURNS,
    min_turns: int = 0,
) -> None:
    """One visitor's turns until the deadline (a turn under way then is finished) and at least `min_turns` of them,
    however slow the machine: what a run exercises does not depend on how fast it goes."""
    from gradio_client import Client

    rng, turn, client = random.Random(index), 0, None
    while time.monotonic() < deadline or turn < min_turns:
        if turn % session_turns == 0:
            client = Client(url, verbose=False)
            with tally.lock:
                tally.sessions += 1
        question = QUESTIONS[(index + turn) % len(QUESTIONS)]
        tokens = rng.choice((8, 16, 32))
        kind = "visualize" if turn % 5 == 4 else "chat"
        t0 = time.monotonic()
        try:
            if kind == "chat":
                chatbot, *_ = client.predict(
                    question, "", model, 4, 4, "dynamic", 0.9, 0.0, 1.0, tokens, turn, 0, api_name="/chat"
                )
                text = "".join(p.get("text", "") for p in chatbot[-1]["content"] if isinstance(p, dict))
                if not text.strip() or "▒" in text:
                    raise AssertionError(f"an empty or unfinished answer: {text!r}")
            else:
                client.predict(
                    question, model, 4, 4, "static", 0.9, 0.0, 1.0, tokens, 0, 0, "", api_name="/visualize"
                )
            tally.add(kind, time.monotonic() - t0)
            client.predict(api_name="/clear")
            if turn % 7 == 3:
                client.predict(model, api_name="/describe_model")
        except Exception as e:  # every failure counts: a refusal, a timeout, a dropped connection
            tally.fail(f"visitor {index}, turn {turn} ({kind}): {type(e).__name__}: {e}")
        turn += 1


def percentiles(values: list[float]) -> dict:
    if len(values) < 2:
        return {"n": len(values), "p50": values[0] if values else None, "p95": None, "p99": None}
    q = statistics.quantiles(values, n=100, method="inclusive")
    return {
        "n": len(values),
        "p50": round(q[49], 3),
        "p95": round(q[94], 3),
        "p99": round(q[98], 3),
        "max": round(max(values), 3),
    }


def run(
    visitors: int,
    seconds: float,
    out: Path | None = None,
    warmup: float | None = None,
    sample_every: float = 2.0,
    model: str = "assets/models/sdar-tiny",
    session_turns: int = SESSION_TURNS,
    min_turns: int = 0,
) -> dict:
    """The soak (see the module docstring); its figures (also written under `out` when given). Each visitor comes
    back as a new session every `session_turns` turns and takes at least `min_turns` turns, past `seconds` if the
    machine is slow."""
    import psutil

    warmup = seconds / 5 if warmup is None else warmup
    port = free_port()
    log_path = (out or Path("/tmp")) / "studio.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    server = start_studio(port, log_path)
    proc, url = psutil.Process(server.pid), f"http://127.0.0.1:{port}/"
    samples: list[tuple[float, float]] = []  # (seconds since the visitors started, RSS MB)
    tally = Tally()
    try:
        rss_start = proc.memory_info().rss / 2**20
        t0 = time.monotonic()
        deadline = t0 + seconds
        threads = [
            threading.Thread(
                target=visit, args=(url, model, i, deadline, tally, session_turns, min_turns), daemon=True
            )
            for i in range(visitors)
        ]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            samples.append((time.monotonic() - t0, proc.memory_info().rss / 2**20))
            time.sleep(sample_every)
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        samples.append((wall, proc.memory_info().rss / 2**20))
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    log_text = log_path.read_text(errors="replace")

    def rss_at(t: float) -> float:
        return min(samples, key=lambda s: abs(s[0] - t))[1]

    rss_warm, rss_mid, rss_end = rss_at(warmup), rss_at(wall / 2), samples[-1][1]
    result = {
        "visitors": visitors,
        "seconds": round(wall, 1),
        "warmup_s": warmup,
        "sessions": tally.sessions,
        "turns": sum(len(v) for v in tally.latencies.values()) + len(tally.failures),
        "failures": len(tally.failures),
        "failure_examples": tally.failures[:20],
        "latency_s": {kind: percentiles(v) for kind, v in sorted(tally.latencies.items())},
        "rss_mb": {
            "start": round(rss_start, 1),
            "after_warmup": round(rss_warm, 1),
            "middle": round(rss_mid, 1),
            "end": round(rss_end, 1),
            "max": round(max(s[1] for s in samples), 1),
        },
        "last_half_growth": round(rss_end / rss_mid - 1, 4),
        "server_log_tracebacks": log_text.count("Traceback"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
        with (out / "rss.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["seconds", "rss_mb"])
            w.writerows((round(t, 1), round(r, 1)) for t, r in samples)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--visitors", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak")
    args = ap.parse_args(argv)
    r = run(args.visitors, args.minutes * 60, args.out)
    lat = " · ".join(
        f"{k}: p50 {v['p50']} s, p95 {v['p95']} s, p99 {v['p99']} s ({v['n']})"
        for k, v in r["latency_s"].items()
    )
    rss = r["rss_mb"]
    print(
        f"soak: {r['visitors']} visitors, {r['seconds']} s, {r['sessions']} sessions, {r['turns']} turns, "
        f"{r['failures']} failures\nlatency: {lat}\nserver RSS: start {rss['start']} MB, after warm-up "
        f"{rss['after_warmup']} MB, middle {rss['middle']} MB, end {rss['end']} MB (last half "
        f"{r['last_half_growth']:+.1%}); tracebacks in the server log: {r['server_log_tracebacks']}"
    )
    for f in r["failure_examples"]:
        print("  failure:", f)


if __name__ == "__main__":
    main()
