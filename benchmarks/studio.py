"""The studio end to end: what a visitor sees (through gradio_client) against the engine on the same settings.

    python -m benchmarks.studio --out benchmarks/results/<name> [--arch sdar-1.7b] [--workdir /tmp/studio-bench]

One run, one machine (a GPU, or the CPU with --arch tiny):
1. writes a random-weight SDAR checkpoint of --arch (save_pretrained, the SDAR-4B tokenizer of tests/fixtures) and
   its AR twin (the same weights as a qwen3 checkpoint, so the race has three lanes of equal work: with random
   weights dynamic decoding commits one token per forward, TPF 1.0, like AR);
2. the engine: `generate` in this process on each setting the studio is asked for below, with the studio's
   prompt ids and stop tokens, warmed up and repeated (tokens/s, median); once without and once with the step
   trace the studio records;
3. starts `python app.py --model <checkpoint>` (the GPU warm-up runs at start: its log lines are kept), drives
   chat (first request after start, then repeats), the race (three lanes, timed runs) and the visualizer through
   gradio_client, and reads the tokens/s the studio shows, the time to its first streamed frame and the frames it
   delivered per second;
4. the crowd (--crowd 1 4 8 16): N visitors, each its own gradio_client, press Send at the same moment (one
   threading.Barrier), for static block 16 / 4 steps and dynamic block 4; per visitor the time to the whole answer
   and to its first shown token, the tokens/s the page shows, the bytes received (the JSON of the changes Gradio
   streams, gradio.utils.diff of successive outputs, as the page receives them); the makespan and the aggregate
   tokens/s, beside `generate`'s batch-N throughput on the same prompts in the same run.
Writes results.json, results.csv, crowd.csv and summary.md under --out. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from app.feed import expand
from app.interpreter import set_switch_interval
from sdar_core.device import default_device, default_dtype, synchronize
from sdar_core.loading import load_pretrained, load_tokenizer, save_pretrained

from .common import ARCHS, arch_config, as_ar, machine_info, random_model

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "tests" / "fixtures" / "sdar-4b-chat"
MESSAGE = "Explain in detail how a block-diffusion language model decodes a long answer."
FOLLOW_UPS = ("And how long does that take?", "Say it again, shorter.")  # the 2nd and 3rd turns of a chat
TPS = re.compile(r"\*\*([\d.]+)\*\* tokens/s")
NFE = re.compile(r"\*\*NFE\*\* (\d+)")
TOKENS = re.compile(r"(\d+) tokens ·")


def figure(pattern: re.Pattern, stats: str) -> float:
    """The number `pattern` finds in the page's stats line; the page's own text when it is not there (an error shown
    in place of the stats is reported as what it says, not as a failed match)."""
    found = pattern.search(stats or "")
    if found is None:
        raise ValueError(f"the page showed no {pattern.pattern!r} figure: {(stats or '(nothing)')[:200]!r}")
    return float(found.group(1))


@dataclass(frozen=True)
class Setting:
    name: str
    strategy: str
    block_length: int
    steps: int
    threshold: float = 0.9

    def ui(self, model: str, max_new_tokens: int) -> dict:
        """The studio API's decoding inputs by name."""
        return dict(
            model_name=model,
            block_length=self.block_length,
            steps=self.steps,
            strategy=self.strategy,
            threshold=self.threshold,
            temperature=0.0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            seed=0,
        )

    def generate_kwargs(self, max_new_tokens: int) -> dict:
        return dict(
            strategy=self.strategy,
            block_length=self.block_length,
            steps=self.steps,
            threshold=self.threshold,
            max_new_tokens=max_new_tokens,
        )


SETTINGS = (Setting("dynamic b4", "dynamic", 4, 4), Setting("static b16/4", "static", 16, 4))


@dataclass
class Row:
    what: str  # "chat" | "race lane" | "visualize"
    setting: str
    engine_tps: float | None = None  # generate alone, median
    engine_traced_tps: float | None = None  # generate with the studio's step recording (trace=True)
    studio_tps: float | None = None  # what the studio showed, median of the repeated requests
    studio_runs: list = field(default_factory=list)  # tokens/s of every request, the first one first
    first_request_tps: float | None = None
    forwards: int | None = None
    tokens: int | None = None
    first_frame_s: float | None = None  # request sent -> first streamed frame with a decoded step, median
    frames_per_s: float | None = None  # streamed frames per second while decoding, median
    wall_s: float | None = None  # request sent -> last output, median

    @property
    def ratio(self) -> float | None:
        return self.studio_tps / self.engine_tps if self.studio_tps and self.engine_tps else None


def write_checkpoints(arch: str, workdir: Path, device, dtype) -> tuple[Path, Path]:
    """workdir/sdar-bench and workdir/ar-bench (its twin: the same weights, model_type qwen3). The SDAR checkpoint
    lists the block lengths this bench decodes with as trained (as a real checkpoint lists its own), so that the
    studio's warm-up covers them."""
    tokenizer = load_tokenizer(TOKENIZER)
    config = arch_config(arch)
    config.trained_block_sizes = sorted({s.block_length for s in SETTINGS})
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    config.mask_token_id = tokenizer.convert_tokens_to_ids("<|MASK|>")
    config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = random_model(config, device, dtype)
    sdar = save_pretrained(model, tokenizer, workdir / "sdar-bench")
    twin = save_pretrained(as_ar(model), tokenizer, workdir / "ar-bench")
    del model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return Path(sdar), Path(twin)


def timed(model, ids, stop_ids, repeats: int, **kwargs) -> tuple[list[float], object]:
    """tokens/s of `repeats` generate calls after one untimed call, and the last Generation."""
    from sdar_core import generate

    generate(model, [ids], stop_token_ids=stop_ids, **kwargs)
    speeds = []
    for _ in range(repeats):
        gen = generate(model, [ids], stop_token_ids=stop_ids, **kwargs)
        speeds.append(gen.stats.tokens_per_second)
    return speeds, gen


def engine_rows(sdar: Path, twin: Path, args, device, dtype) -> dict[tuple[str, str], Row]:
    """generate alone, on the prompt the studio builds for MESSAGE (chat) and for the race prompt."""
    from app.prompting import conversation, prompt_ids
    from sdar_core.prompting import stop_ids_for

    rows = {}
    for folder, lanes in (
        (
            sdar,
            [("chat", s) for s in SETTINGS]
            + [("race lane", SETTINGS[0]), ("race lane", Setting("ar", "ar", 1, 1))],
        ),
        (twin, [("race lane", Setting("ar twin", "ar", 1, 1))]),
    ):
        model, tok = load_pretrained(str(folder), device=device, dtype=dtype)
        stop_ids = stop_ids_for(tok, model.config)
        for what, s in lanes:
            message = MESSAGE if what == "chat" else args.race_prompt
            ids, _ = prompt_ids(tok, conversation("", [], message))
            speeds, gen = timed(model, ids, stop_ids, args.repeats, **s.generate_kwargs(args.new_tokens))
            traced, _ = timed(
                model, ids, stop_ids, args.repeats, trace=True, **s.generate_kwargs(args.new_tokens)
            )
            rows[(what, s.name)] = Row(
                what,
                s.name,
                engine_tps=statistics.median(speeds),
                engine_traced_tps=statistics.median(traced),
                forwards=gen.stats.forwards,
                tokens=gen.stats.new_tokens,
            )
            print(
                f"engine {what} {s.name}: {rows[(what, s.name)].engine_tps:.1f} tokens/s "
                f"(traced {rows[(what, s.name)].engine_traced_tps:.1f})",
                flush=True,
            )
        if folder == sdar and not args.crowd_only:
            third = Row("chat, 3rd turn", SETTINGS[0].name)
            ids = third_turn_ids(model, tok, stop_ids, args.new_tokens)
            speeds, gen = timed(
                model, ids, stop_ids, args.repeats, **SETTINGS[0].generate_kwargs(args.new_tokens)
            )
            third.engine_tps, third.forwards, third.tokens = (
                statistics.median(speeds),
                gen.stats.forwards,
                gen.stats.new_tokens,
            )
            rows[("chat, 3rd turn", SETTINGS[0].name)] = third
            print(
                f"engine chat, 3rd turn ({len(ids)} prompt tokens): {third.engine_tps:.1f} tokens/s",
                flush=True,
            )
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def third_turn_ids(model, tok, stop_ids: list[int], new_tokens: int) -> list[int]:
    """The prompt of the studio's 3rd chat turn (studio_rows), replayed on the engine: the first answer with the last
    setting (the last conversation of the chat rows), the second turn with the first, each answer kept as the chat
    keeps it (decoded, special tokens left out). The 3rd turn's speed is then compared with the engine's on the same
    prompt length, not with the first turn's shorter one."""
    from app.prompting import conversation, prompt_ids
    from sdar_core import generate

    history: list[dict] = []
    for message, s in ((MESSAGE, SETTINGS[-1]), (FOLLOW_UPS[0], SETTINGS[0])):
        ids, _ = prompt_ids(tok, conversation("", history, message))
        gen = generate(model, [ids], stop_token_ids=stop_ids, **s.generate_kwargs(new_tokens))
        answer = tok.decode(gen.row_tokens(0), skip_special_tokens=True)
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": answer}]
    return prompt_ids(tok, conversation("", history, FOLLOW_UPS[1]))[0]


class App:
    """`python app.py --model <sdar>` in a subprocess; its log lines kept with their times."""

    def __init__(self, sdar: Path, port: int) -> None:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "GRADIO_ANALYTICS_ENABLED": "False",
            "SDAR_STALL_REPORT": str(STALL_THRESHOLD),
            "GRADIO_PROFILING": "1",  # Gradio's own per-request phases (queue wait, postprocess, ...): `traces`
        }
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "app.py", "--model", str(sdar), "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.url = f"http://127.0.0.1:{port}/"
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.perf_counter() - self.t0, line.rstrip()))

    def wait_for(self, text: str, timeout: float) -> float:
        """Seconds since start when a log line containing `text` appeared."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, line in list(self.lines):
                if text in line:
                    return t
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(
            f"the studio did not log {text!r} in {timeout:.0f} s:\n"
            + "\n".join(line for _, line in self.lines[-30:])
        )

    def profile(self, path: Path, seconds: float) -> subprocess.Popen:
        """py-spy (when installed) samples every thread of the studio for `seconds`: collapsed stacks, idle frames
        included, so that a decode thread waiting for the interpreter shows where it waits."""
        path.parent.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(self.proc.pid),
                "--format",
                "raw",
                "--idle",
                "--threads",
                "--nonblocking",
                "--rate",
                "200",
                "--duration",
                str(int(seconds)),
                "-o",
                str(path),
            ]
        )

    def traces(self) -> list[dict]:
        """Gradio's record of each request it ran (GRADIO_PROFILING): fn_name, queue_wait_ms, preprocess_ms,
        fn_call_ms, postprocess_ms, streaming_diff_ms, total_ms, n_iterations; none when it cannot be read."""
        import httpx

        try:
            r = httpx.get(self.url + "gradio_api/profiling/traces", timeout=30)
            r.raise_for_status()
            return list(r.json())
        except Exception as e:  # reported, not raised: the bench's figures stand without it
            print(f"Gradio's traces could not be read: {e}", flush=True)
            return []

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def feeds(out) -> list[dict]:
    """The players' values in an output of /chat or /visualize, their logs read (app/feed.py)."""
    return [
        expand(v)
        for v in (out if isinstance(out, (list, tuple)) else [out])
        if isinstance(v, dict) and isinstance(v.get("log"), str)
    ]


def has_steps(out) -> bool:
    """Whether an output of /chat or /visualize shows decoded steps (the player's feed has some)."""
    return any(f["steps"] for f in feeds(out))


def shows_tokens(out) -> bool:
    """Whether the player's feed in an output holds a committed token."""
    return any(step["c"] for f in feeds(out) for step in f["steps"])


def streamed(client, api_name: str, *args, has_frame=has_steps, **kwargs) -> tuple:
    """Submit and follow one request: (wall seconds, seconds to the first output with a frame, outputs with one, the
    last output, those outputs per second)."""
    t0 = time.perf_counter()
    job = client.submit(*args, api_name=api_name, **kwargs)
    first, frames, last, times = None, 0, None, []
    for out in job:
        now = time.perf_counter() - t0
        if last is None and os.environ.get("SDAR_BENCH_VERBOSE"):
            print(f"  {api_name}: first output after {now:.2f} s", flush=True)
        if has_frame(out):
            frames += 1
            times.append(now)
            first = first if first is not None else now
        last = out
    last = job.outputs()[-1] if job.outputs() else last
    span = times[-1] - times[0] if times else 0.0  # outputs that came together give no rate, not a huge one
    fps = (len(times) - 1) / span if len(times) > 2 and span > 0.1 else None
    return time.perf_counter() - t0, first, frames, last, fps


def streamed_bytes(outputs: list) -> int:
    """Bytes of what Gradio streams for these successive outputs: the JSON of each output's changes against the one
    before (gradio.utils.diff, what a streaming event sends), the first one whole."""
    from gradio.utils import diff

    total, previous = 0, None
    for out in outputs:
        values = list(out) if isinstance(out, (list, tuple)) else [out]
        total += len(
            json.dumps(
                values if previous is None else [diff(a, b) for a, b in zip(previous, values)], default=str
            ).encode()
        )
        previous = values
    return total


def studio_rows(rows: dict, sdar: Path, args) -> dict:
    """Drive the running studio; fills the studio_* fields of `rows`; returns the start-up figures."""
    from gradio_client import Client

    app = App(sdar, args.port)
    info = {}
    try:
        info["ready_s"] = app.wait_for("SDAR Studio is running", 600)
        warming = any("GPU warm-up started" in line for _, line in app.lines)  # logged before "running"
        info["warmup_done_s"] = app.wait_for("GPU warm-up done", 600) if warming else None  # the CPU: none
        if args.crowd_only:  # the crowd alone (a short device session): no chat, race or visualizer rows
            info.update(crowd_and_probes(app, sdar, args))
            return info
        client = Client(app.url, verbose=False)
        spy = app.profile(Path(args.out) / "chat-profile.txt", args.profile) if args.profile else None
        for s in SETTINGS:
            row, runs = rows[("chat", s.name)], []
            for i in range(args.repeats + 1):
                client.predict(api_name="/clear")  # a new conversation: the same prompt every time
                wall, first, frames, out, fps = streamed(
                    client, "/chat", message=MESSAGE, **s.ui(str(sdar), args.new_tokens)
                )
                stats = out[
                    3
                ]  # chatbot, message box, live view, stats (the gr.State outputs are not in the API)
                runs.append((figure(TPS, stats), first, fps, wall))
                row.forwards = int(figure(NFE, stats))
                print(
                    f"studio chat {s.name} #{i + 1}: {runs[-1][0]:.1f} tokens/s, first frame {first:.2f} s, "
                    f"{frames} frames",
                    flush=True,
                )
            row.first_request_tps = runs[0][0]
            row.studio_runs = [r[0] for r in runs]
            later = runs[1:]
            row.studio_tps = statistics.median(r[0] for r in later)
            row.first_frame_s = statistics.median(r[1] for r in later if r[1] is not None)
            row.frames_per_s = statistics.median([r[2] for r in later if r[2]] or [0.0])
            row.wall_s = statistics.median(r[3] for r in later)
        # Follow-up questions: the prompt holds the earlier answers, so it lands in a larger cache bucket (the engine's
        # figure for it is taken on the same conversation: third_turn_ids).
        follow = rows[("chat, 3rd turn", SETTINGS[0].name)]
        streamed(
            client, "/chat", message=FOLLOW_UPS[0], **SETTINGS[0].ui(str(sdar), args.new_tokens)
        )  # the 2nd turn of the last conversation
        wall, first, _, out, fps = streamed(
            client, "/chat", message=FOLLOW_UPS[1], **SETTINGS[0].ui(str(sdar), args.new_tokens)
        )  # the 3rd
        follow.studio_tps, follow.first_frame_s, follow.frames_per_s, follow.wall_s = (
            figure(TPS, out[3]),
            first,
            fps,
            wall,
        )
        follow.forwards = int(figure(NFE, out[3]))
        rows[("chat, 3rd turn", SETTINGS[0].name)] = follow
        if spy is not None:
            spy.wait(60)
        from app.race import SEQUENTIAL

        wall, first, frames, out, _ = streamed(
            client,
            "/race",
            prompt=args.race_prompt,
            has_frame=lambda out: "sdar-frame" in json.dumps(out, default=str),
            mode=SEQUENTIAL,
            use_twin=True,
            repeats=args.repeats,
            **SETTINGS[0].ui(str(sdar), args.new_tokens),
        )
        table = out[3]
        for record in table["data"]:
            r = dict(zip(table["headers"], record))
            name = {"ar": "ar", "dynamic": SETTINGS[0].name}[r["strategy"]]
            if r["run"].startswith("AR twin"):
                name = "ar twin"
            row = rows[("race lane", name)]
            row.studio_tps, row.forwards = r["tokens/s (median)"], r["forwards (NFE)"]
            lo, hi = map(float, r["tokens/s (min–max)"].split("–"))
            row.studio_runs = [lo, hi]
            row.wall_s = wall
        info["race_headline"] = out[4]
        wall, first, frames, out, fps = streamed(
            client, "/visualize", prompt=MESSAGE, **SETTINGS[0].ui(str(sdar), args.new_tokens)
        )
        rows[("visualize", SETTINGS[0].name)] = Row(
            "visualize", SETTINGS[0].name, wall_s=wall, first_frame_s=first, frames_per_s=fps
        )
        info.update(crowd_and_probes(app, sdar, args))
    finally:
        info["gradio_traces"] = app.traces()
        app.stop()
        info["log"] = [
            f"{t:7.2f} s  {line}"
            for t, line in app.lines
            if "warm-up" in line or "loaded" in line or "running" in line or "Error" in line
        ]
        info["served"] = served_timelines([line for _, line in app.lines])
        info["stalls_s"] = [float(m[1]) for _, line in app.lines if (m := STALL.search(line))]
        info["server_log"] = [f"{t:8.3f} s  {line}" for t, line in app.lines]
    return info


SERVED = re.compile(
    r"served a chat answer: (\d+) tokens, waited ([\d.]+) s for the device, decoded in ([\d.]+) s "
    r"\(batch (\d+)\), answered ([\d.]+) s after the request; (\d+) messages before the answer, the first at "
    r"(?:([\d.]+) s|never), ([\d.]+) s in Gradio between them"
)
STALL = re.compile(r"the interpreter was held for ([\d.]+) s")
STALL_THRESHOLD = (
    0.25  # seconds: the studio under test logs every longer hold of its interpreter (app/stalls.py)
)


def served_timelines(lines: list[str]) -> list[dict]:
    """The server's own account of each chat answer (app/chat.py logs it): where its time went before Gradio sent
    it. A visitor's wall time minus `answered_s` is Gradio's delivery and the client."""
    found = (SERVED.search(line) for line in lines)
    return [
        {
            "tokens": int(m[1]),
            "waited_s": float(m[2]),
            "decoded_s": float(m[3]),
            "batch": int(m[4]),
            "answered_s": float(m[5]),
            "messages": int(m[6]),
            "first_message_s": None if m[7] is None else float(m[7]),
            "in_gradio_s": float(m[8]),
        }
        for m in found
        if m
    ]


@dataclass
class Visitor:
    """One visitor of a crowd: from pressing Send (all at one barrier) to the whole answer."""

    crowd: int  # visitors who pressed Send together
    setting: str
    round: int  # 1: the first crowd of this size and setting (its batch shape captured then), 2: the next
    visitor: int
    client: str = "gradio"  # how it reads the answer: CLIENTS (gradio_client, or plain HTTP as a page does)
    wall_s: float | None = None  # submit -> the output that carries the whole answer (its stats with it)
    completed_s: float | None = None  # submit -> the request's end (the recording follows the answer)
    first_token_s: float | None = None  # submit -> the first output whose player shows a committed token
    first_output_s: float | None = None  # submit -> the first output of any kind
    outputs: int = 0  # outputs received
    page_tps: float | None = None  # the tokens/s the page prints
    tokens: int | None = None
    bytes: int | None = None  # what Gradio streamed (streamed_bytes)
    batch: int | None = None  # rows of the decode it shared, as the page says
    error: str | None = None
    # a lone visitor's time beside the studio's own account of its answer (the served line, same clock):
    before_handler_s: float | None = (
        None  # submit -> the handler began (Gradio's queue and the client's request)
    )
    server_s: float | None = None  # the handler's own time, to its answer
    after_answer_s: float | None = (
        None  # the answer logged -> the client had the answer (Gradio's delivery and the client's reading)
    )
    submitted_at: float | None = field(default=None, repr=False)  # perf_counter of the bench process
    ended_at: float | None = field(default=None, repr=False)  # when the answer arrived


def crowd_prompts(n: int) -> list[str]:
    return [f"{MESSAGE} (Visitor {i + 1} asks.)" for i in range(n)]


def engine_batches(sdar: Path, args, device, dtype) -> dict[tuple[str, int], dict]:
    """generate on the crowd's N prompts as one batch (warmed up, median of --repeats): the aggregate tokens/s the
    engine gives a crowd of N, and its decode seconds."""
    from app.prompting import conversation, prompt_ids
    from sdar_core import generate
    from sdar_core.prompting import stop_ids_for

    model, tok = load_pretrained(str(sdar), device=device, dtype=dtype)
    stop_ids, out = stop_ids_for(tok, model.config), {}
    for s in SETTINGS:
        for n in args.crowd:
            rows = [prompt_ids(tok, conversation("", [], m))[0] for m in crowd_prompts(n)]
            kwargs = dict(stop_token_ids=stop_ids, **s.generate_kwargs(args.new_tokens))
            generate(model, rows, **kwargs)
            gens = [generate(model, rows, **kwargs) for _ in range(args.repeats)]
            tps = statistics.median(g.stats.tokens_per_second for g in gens)
            out[(s.name, n)] = {
                "tokens_per_s": tps,
                "seconds": statistics.median(g.stats.seconds for g in gens),
                "tokens": gens[-1].stats.new_tokens,
            }
            print(f"engine batch {n} {s.name}: {tps:.0f} tokens/s in all", flush=True)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


class HttpPage:
    """A visitor's open page, read without gradio_client: one Gradio session (its own session hash) and one HTTP
    connection (httpx), requests sent the way the page's own client sends them: built as `client.submit` builds
    them (the endpoint's argument order and state slots), posted to the queue, and the session's event stream read
    line by line, opened after the POST as gradio_client does (the server closes a session's stream that has no
    event). `client` is a gradio_client Client, used only for the app's description. `open()` is the page load:
    a light request first, so that Gradio's per-session set-up (its state and config copies, on its interpreter)
    is paid before the visitor presses Send, as a browser's page-load event pays it."""

    def __init__(self, client) -> None:
        import uuid

        import httpx

        self.client, self.session = client, uuid.uuid4().hex
        self.http = httpx.Client(timeout=httpx.Timeout(120.0))

    def open(self) -> None:
        for _ in self.events("/clear", {}):
            pass

    def chat(self, message: str, ui: dict) -> Iterator[tuple]:
        """The /chat outputs as the page receives them, the completed answer last."""
        for _, _, out in self.events("/chat", {"message": message, **ui}):
            if out is not None:
                yield out

    def close(self) -> None:
        self.http.close()

    def events(self, api_name: str, kwargs: dict) -> Iterator[tuple[float, str, tuple | None]]:
        """One request: (seconds after it was sent, what: "queue_answered" | "stream_open" | a message's kind, the
        API's output when the message carries one: the diffs applied, the state slots left out, as gradio_client
        returns it)."""
        from gradio_client import utils

        fn = self.client._infer_fn_index(api_name, None)
        endpoint = self.client.endpoints[fn]
        data = utils.construct_args(endpoint.parameters_info, (), kwargs)
        data = list(endpoint.process_input_files(*endpoint.insert_empty_state(*data)))
        t0 = time.perf_counter()
        r = self.http.post(
            self.client.sse_data_url, json={"data": data, "fn_index": fn, "session_hash": self.session}
        )
        r.raise_for_status()
        yield time.perf_counter() - t0, "queue_answered", None
        with self.http.stream("GET", self.client.sse_url, params={"session_hash": self.session}) as stream:
            yield time.perf_counter() - t0, "stream_open", None
            values = None
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                kind, out = msg.get("msg", "?"), None
                if kind == "heartbeat":
                    continue
                if kind == "process_generating":
                    got = msg["output"]["data"]
                    values = (
                        list(got) if values is None else [utils.apply_diff(a, b) for a, b in zip(values, got)]
                    )
                    out = endpoint.remove_skipped_components(*values)
                elif kind == "process_completed":
                    if not msg.get("success", True):
                        raise RuntimeError(f"the studio answered with an error: {msg.get('output')}")
                    out = endpoint.remove_skipped_components(*msg["output"]["data"])
                yield time.perf_counter() - t0, kind, out
                if kind == "process_completed":
                    return


class GradioVisitor:
    """A visitor through gradio_client (the issue's visitor): its own Client, whose session a light request opens
    first (the page load, see HttpPage)."""

    def __init__(self, url: str) -> None:
        from gradio_client import Client

        self.client = Client(url, verbose=False, analytics_enabled=False)

    def open(self) -> None:
        self.client.predict(api_name="/clear")

    def chat(self, message: str, ui: dict) -> Iterator[tuple]:
        job = self.client.submit(message=message, api_name="/chat", **ui)
        yield from job
        final = job.outputs()
        if final:
            yield final[-1]

    def close(self) -> None:
        self.client.close()  # it keeps a heartbeat stream to the server: a crowd leaves none behind


CLIENTS = ("gradio", "http")


def answered(out) -> bool:
    """Whether this /chat output carries the whole answer: its stats line is printed with it."""
    return bool(TOKENS.search(str(out[3])))


def visit(visitor, v: Visitor, message: str, ui: dict, barrier: threading.Barrier) -> Visitor:
    """One visitor's /chat (a GradioVisitor or an HttpPage, its page open), from the barrier to the answer."""
    barrier.wait()
    t0 = v.submitted_at = time.perf_counter()
    try:
        outputs = []
        for out in visitor.chat(message, ui):
            if outputs and out == outputs[-1]:
                continue  # the answer repeated at the end (the completed message, gradio_client's final list)
            outputs.append(out)
            now = time.perf_counter()
            if v.first_output_s is None:
                v.first_output_s = now - t0
            if v.first_token_s is None and shows_tokens(out):
                v.first_token_s = now - t0
            if v.ended_at is None and answered(out):
                v.ended_at = now
        v.outputs = len(outputs)
        v.completed_s = time.perf_counter() - t0
        v.wall_s = v.ended_at - t0
        stats = outputs[-1][3]
        v.page_tps = figure(TPS, stats)
        v.tokens = int(figure(TOKENS, stats))
        shared = re.search(r"one batch with (\d+) other", stats)
        v.batch = int(shared.group(1)) + 1 if shared else 1
        v.bytes = streamed_bytes(outputs)
    except Exception as e:  # reported, not raised: a crowd's failures are a result
        v.wall_s, v.error = time.perf_counter() - t0, f"{type(e).__name__}: {e}"[:300]
    return v


def probe(page: HttpPage, message: str, ui: dict) -> dict:
    """One /chat of an open HttpPage timed at the socket: seconds after the submit of the queue's answer to the
    POST, the stream's headers and each kind of message's first arrival. What a visitor waits for that this probe
    does not is gradio_client's; what this probe waits for too is the server's."""
    times: dict[str, float] = {}
    messages = 0
    for t, what, _ in page.events("/chat", {"message": message, **ui}):
        times.setdefault(what if what in ("queue_answered", "stream_open") else f"first_{what}", t)
        if what not in ("queue_answered", "stream_open"):
            messages += 1
            times["completed"] = t
    return {**times, "messages": messages}


def probes(url: str, sdar: Path, args) -> list[dict]:
    """`probe` three times for each setting."""
    from gradio_client import Client

    client = Client(url, verbose=False, analytics_enabled=False)
    page, out = HttpPage(client), []
    try:
        page.open()
        for s in SETTINGS:
            for _ in range(3):
                try:
                    r = {"setting": s.name, **probe(page, MESSAGE, s.ui(str(sdar), args.new_tokens))}
                except Exception as e:  # reported, not raised: a probe's failure is a result
                    r = {"setting": s.name, "error": f"{type(e).__name__}: {e}"}
                print("probe", json.dumps(r), flush=True)
                out.append(r)
    finally:
        page.close()
        client.close()
    return out


def crowd_and_probes(app: App, sdar: Path, args) -> dict:
    """The crowd (args.crowd, none when empty), each lone visitor's time split by the studio's served lines, then
    the plain-HTTP probes: `visitors` and `probes` of the results."""
    visitors = crowd_rows(app.url, sdar, args) if args.crowd else []
    split_lone_visitors(visitors, [(app.t0 + t, line) for t, line in app.lines])
    return {"visitors": visitors, "probes": probes(app.url, sdar, args)}


def split_lone_visitors(visitors: list[Visitor], lines: list[tuple[float, str]]) -> None:
    """For each visitor who came alone: where its wall time went, from the served line the studio logged between its
    submit and its end (`lines`: the bench's clock, perf_counter, and the line)."""
    for v in visitors:
        if v.crowd != 1 or v.submitted_at is None or v.ended_at is None:
            continue
        for t, line in lines:
            m = SERVED.search(line)
            if m and v.submitted_at <= t <= v.ended_at + 1.0:
                answered = float(m[5])
                v.server_s = answered
                v.before_handler_s = max(0.0, t - answered - v.submitted_at)
                v.after_answer_s = max(0.0, v.ended_at - t)
                break


def crowd_rows(url: str, sdar: Path, args) -> list[Visitor]:
    """Every client kind (args.clients; gradio_client alone when it has none), setting and crowd size, twice (the first
    crowd of a size captures its batch shape on a GPU). Each visitor has its page open (its session set up) before
    the crowd presses Send together. A gradio_client visitor has a Client of its own; the plain-HTTP visitors
    (HttpPage) share one Client for the app's description and each hold their own session and connection."""
    from gradio_client import Client

    visitors, closing = [], []
    shared = Client(url, verbose=False, analytics_enabled=False)
    try:
        kinds = getattr(args, "clients", None) or ["gradio"]
        for kind, s, n, rnd in itertools.product(kinds, SETTINGS, args.crowd, (1, 2)):
            people = [GradioVisitor(url) if kind == "gradio" else HttpPage(shared) for _ in range(n)]
            try:
                visitors += crowd_round(people, kind, s, rnd, sdar, args)
            finally:
                closing += [close_without_waiting(p) for p in people]
    finally:
        closing.append(close_without_waiting(shared))
        for t in closing:
            t.join()
    return visitors


def close_without_waiting(client) -> threading.Thread:
    """Close a visitor (or a Client) on a thread of its own. gradio_client's close sets its heartbeat thread's stop
    flag at once, then waits up to 1 s for that thread, which leaves only at the server's next heartbeat message: the
    next round need not wait for it."""
    closer = threading.Thread(target=client.close)
    closer.start()
    return closer


def crowd_round(people: list, kind: str, s: Setting, rnd: int, sdar: Path, args) -> list[Visitor]:
    """The visitors of `kind` (`people`, not yet open) open their pages, then press Send at one barrier."""
    n = len(people)
    for p in people:
        p.open()
    barrier = threading.Barrier(n)
    crowd = [Visitor(n, s.name, rnd, i + 1, client=kind) for i in range(n)]
    threads = [
        threading.Thread(target=visit, args=(p, v, m, s.ui(str(sdar), args.new_tokens), barrier))
        for p, v, m in zip(people, crowd, crowd_prompts(n))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    walls = [v.wall_s for v in crowd if v.wall_s is not None]
    print(
        f"crowd {n} {s.name} round {rnd} ({kind}): makespan {max(walls):.2f} s, median "
        f"{statistics.median(walls):.2f} s, errors {sum(v.error is not None for v in crowd)}",
        flush=True,
    )
    return crowd


def crowd_summary(visitors: list[Visitor], engine: dict) -> list[dict]:
    """Per (client, setting, crowd size, round): makespan, the median visitor, aggregate tokens/s against the
    engine's."""
    groups: dict[tuple, list[Visitor]] = {}
    for v in visitors:
        groups.setdefault((v.client, v.setting, v.crowd, v.round), []).append(v)
    rows = []
    for (kind, setting, n, rnd), vs in groups.items():
        ok = [v for v in vs if v.error is None]
        makespan = max(v.wall_s for v in vs)
        tokens = sum(v.tokens or 0 for v in ok)
        e = engine.get((setting, n), {})
        agg = tokens / makespan if makespan else None
        med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
        rows.append(
            {
                "client": kind,
                "setting": setting,
                "visitors": n,
                "round": rnd,
                "answered": len(ok),
                "errors": len(vs) - len(ok),
                "makespan_s": makespan,
                "median_wall_s": med([v.wall_s for v in ok]),
                "median_first_token_s": med([v.first_token_s for v in ok if v.first_token_s is not None]),
                "median_page_tps": med([v.page_tps for v in ok if v.page_tps]),
                "median_bytes": med([v.bytes for v in ok if v.bytes]),
                "batches_seen": sorted({v.batch for v in ok}),
                "aggregate_tps": agg,
                "engine_batch_tps": e.get("tokens_per_s"),
                "engine_batch_s": e.get("seconds"),
                "aggregate_over_engine": agg / e["tokens_per_s"] if agg and e.get("tokens_per_s") else None,
            }
        )
    return rows


def write_outputs(
    out: Path, rows: list[Row], info: dict, visitors: list[Visitor] = (), crowd: list[dict] = ()
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "server.log").write_text("\n".join(info.pop("server_log", [])) + "\n")
    records = [{**asdict(r), "ratio": r.ratio} for r in rows]
    (out / "results.json").write_text(
        json.dumps(
            {"machine": info.pop("machine"), "info": info, "rows": records, "crowd": list(crowd)}, indent=1
        )
    )
    if visitors:
        with open(out / "crowd.csv", "w", newline="") as f:
            kept = [{k: x for k, x in asdict(v).items() if not k.endswith("_at")} for v in visitors]
            w = csv.DictWriter(f, fieldnames=list(kept[0]))
            w.writeheader()
            w.writerows(kept)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(records[0]))
        w.writeheader()
        w.writerows(records)
    lines = [
        "| what | setting | engine tok/s | engine traced | studio tok/s | studio / engine | first request | "
        "forwards | first frame (s) | frames/s |",
        "|" + "---|" * 10,
    ]
    fmt = lambda v, p=1: "" if v is None else f"{v:.{p}f}"  # noqa: E731
    for r in rows:
        lines.append(
            f"| {r.what} | {r.setting} | {fmt(r.engine_tps)} | {fmt(r.engine_traced_tps)} | "
            f"{fmt(r.studio_tps)} | {fmt(r.ratio, 2)} | {fmt(r.first_request_tps)} | {r.forwards or ''} | "
            f"{fmt(r.first_frame_s, 2)} | {fmt(r.frames_per_s)} |"
        )
    if crowd:
        lines += [
            "",
            "| client | setting | visitors | round | answered | makespan (s) | median visitor (s) | "
            "first token (s) | page tok/s | bytes | aggregate tok/s | engine batch tok/s | aggregate / engine |",
            "|" + "---|" * 13,
        ]
        for c in crowd:
            lines.append(
                f"| {c['client']} | {c['setting']} | {c['visitors']} | {c['round']} | {c['answered']} | "
                f"{fmt(c['makespan_s'], 2)} | "
                f"{fmt(c['median_wall_s'], 2)} | {fmt(c['median_first_token_s'], 2)} | "
                f"{fmt(c['median_page_tps'])} | {c['median_bytes'] or ''} | {fmt(c['aggregate_tps'])} | "
                f"{fmt(c['engine_batch_tps'])} | {fmt(c['aggregate_over_engine'], 3)} |"
            )
    served = info.get("served") or []
    if served:

        def spread(key: str) -> str:
            xs = sorted(t[key] for t in served if t[key] is not None)
            if not xs:
                return "none"
            return (
                f"p50 {statistics.median(xs):.3f} s, p95 {xs[min(len(xs) - 1, int(0.95 * len(xs)))]:.3f} s, "
                f"max {xs[-1]:.3f} s"
            )

        lines += [
            "",
            f"Server side, {len(served)} chat answers (app/chat.py's log): waited for the device "
            f"{spread('waited_s')}; decoded {spread('decoded_s')}; answered after the request "
            f"{spread('answered_s')}; first message sent {spread('first_message_s')}; in Gradio between "
            f"messages {spread('in_gradio_s')}.",
        ]
    lone = [v for v in visitors if v.server_s is not None]
    if lone:
        lines += [
            "",
            "| lone visitor | client | round | wall (s) | before the handler (s) | the handler (s) | "
            "after the answer (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for v in lone:
            lines.append(
                f"| {v.setting} | {v.client} | {v.round} | {v.wall_s:.2f} | {v.before_handler_s:.2f} | "
                f"{v.server_s:.2f} | "
                f"{v.after_answer_s:.2f} |"
            )
    traces: dict[str, list[dict]] = {}
    for t in info.get("gradio_traces") or []:
        traces.setdefault(str(t.get("fn_name")), []).append(t)
    if traces:
        lines += [
            "",
            "Gradio's own account (GRADIO_PROFILING), per endpoint, p50 / max in ms:",
            "",
            "| endpoint | requests | queue wait | preprocess | handler (all messages) | postprocess | diff | total |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, ts in sorted(traces.items()):

            def pm(key: str) -> str:
                xs = sorted(float(t.get(key) or 0.0) for t in ts)
                return f"{statistics.median(xs):.1f} / {xs[-1]:.1f}"

            lines.append(
                f"| {name} | {len(ts)} | {pm('queue_wait_ms')} | {pm('preprocess_ms')} | {pm('fn_call_ms')} | "
                f"{pm('postprocess_ms')} | {pm('streaming_diff_ms')} | {pm('total_ms')} |"
            )
    probed = [r for r in info.get("probes") or [] if "error" not in r]
    if probed:
        lines += [
            "",
            "| probe (plain HTTP) | queue answered (s) | stream open (s) | first message (s) | first output (s) | "
            "completed (s) |",
            "|---|---|---|---|---|---|",
        ]
        for r in probed:
            lines.append(
                f"| {r['setting']} | {fmt(r.get('queue_answered'), 3)} | {fmt(r.get('stream_open'), 3)} | "
                f"{fmt(min((t for k, t in r.items() if k.startswith('first_')), default=None), 3)} | "
                f"{fmt(r.get('first_process_generating'), 3)} | {fmt(r.get('completed'), 3)} |"
            )
    stalls = info.get("stalls_s")
    if stalls is not None:
        lines.append(
            f"The studio's interpreter was held longer than {STALL_THRESHOLD} s {len(stalls)} times, "
            f"{sum(stalls):.2f} s in all (server.log has each hold's stacks)."
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n\n" + "\n".join(info.get("log", [])) + "\n")
    print("\n".join(lines))


def exit_on_sigterm() -> None:
    """SIGTERM (a `timeout` around the bench) raises SystemExit like Ctrl-C raises KeyboardInterrupt, so that the
    `finally` that stops the studio's process runs: killed outright, the bench would leave the studio running beside
    whatever comes next on the GPU."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    p = argparse.ArgumentParser(prog="python -m benchmarks.studio", description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="sdar-1.7b", choices=sorted(ARCHS))
    p.add_argument("--workdir", default="/tmp/sdar-studio-bench")
    p.add_argument("--out", required=True)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--port", type=int, default=7861)
    p.add_argument(
        "--profile",
        type=float,
        default=0,
        metavar="SECONDS",
        help="sample the studio with py-spy for this long from the first chat request on",
    )
    p.add_argument("--race-prompt", default="Count from one to fifty in words, separated by commas.")
    p.add_argument(
        "--crowd",
        type=int,
        nargs="*",
        default=[1, 4, 8, 16],
        metavar="N",
        help="crowd sizes: N visitors pressing Send at once (none: no crowd sweep)",
    )
    p.add_argument(
        "--clients",
        nargs="+",
        choices=CLIENTS,
        default=["gradio", "http"],
        help="how the crowd's visitors read their answers: gradio_client (each its own Client), plain HTTP "
        "(the page's way: the queue's POST and its event stream)",
    )
    p.add_argument(
        "--crowd-only",
        action="store_true",
        help="measure the crowd (and the engine rows it is compared with) but not the chat, race and "
        "visualizer rows",
    )
    args = p.parse_args(argv)
    # The visitors' clients are threads of this process: at CPython's 5 ms they would slow each other's reading
    # the way the studio's threads slowed its decode (app/interpreter.py).
    client_interval = set_switch_interval({})
    device, workdir = default_device(), Path(args.workdir)
    dtype = default_dtype(device)
    shutil.rmtree(workdir, ignore_errors=True)
    t0 = time.perf_counter()
    sdar, twin = write_checkpoints(args.arch, workdir, device, dtype)
    info = {
        "machine": machine_info(device),
        "arch": args.arch,
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "checkpoints_s": time.perf_counter() - t0,
        "switch_interval": os.environ.get("SDAR_SWITCH_INTERVAL", "the studio's default"),
        "clients_switch_interval": client_interval,
    }
    rows = engine_rows(sdar, twin, args, device, dtype)
    engine = engine_batches(sdar, args, device, dtype) if args.crowd else {}
    synchronize(device)
    info.update(studio_rows(rows, sdar, args))
    visitors = info.pop("visitors", [])
    write_outputs(Path(args.out), list(rows.values()), info, visitors, crowd_summary(visitors, engine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
