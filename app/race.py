"""The AR vs SDAR tab: one prompt decoded one token per forward (`ar`) and by block diffusion on the same
weights (and `ar` on the AR twin when there is one), streamed side by side; a sweep over block lengths and
thresholds (TPF and tokens/s, the paper's Figures 3-4); the GPU measurements of the benchmark.

Timings are compared like with like: every lane is decoded the same way (the same step recording and
streaming), is warmed up untimed first (graph capture and kernel compilation on a GPU), and runs several
times, interleaved with the other lanes; the table and the headline give the median and the spread."""

from __future__ import annotations

import html
import logging
import statistics
import time
from dataclasses import dataclass, field, replace

import gradio as gr
import pandas as pd

from .benchmarks import read_results
from .budget import Budget, OverBudget, runs_within
from .charts import gpu_figure, gpu_table, race_figure, sweep_figures, sweep_table
from .errors import explains_in_place
from .prompting import DEFAULT_SYSTEM, conversation, prompt_ids
from .registry import ar_twin_name
from .render import frame_html, placeholder_html
from .settings import (
    MAX_MESSAGE_CHARS,
    MAX_SYSTEM_CHARS,
    DecodeRequest,
    DecodeSettings,
    Range,
    SettingsError,
    checked_text,
    shown,
)
from .streaming import Lane, decode_alone, stream, warm_up
from .studio import Studio

log = logging.getLogger(__name__)

LANES = ("ar", "sdar", "twin")
RACE_COLUMNS = [
    "run",
    "strategy",
    "block",
    "steps",
    "tokens",
    "forwards (NFE)",
    "TPF",
    "tokens/s (median)",
    "tokens/s (min–max)",
    "latency (ms, median)",
    "timed runs",
]
REPEATS = Range("timed runs per lane", 1, 5, integer=True)
DEFAULT_REPEATS = 3
SWEEP_REPEATS = 3  # timed runs of every sweep point (after one untimed warm-up)
UNSTEADY = 1.5  # repeats of one point further apart than this (fastest / slowest): its tokens/s says little
UNSTEADY_NOTE = (
    "⚠️ Wall-clock figures are unreliable here: the repeats of {n} of {total} points differ by more "
    "than {ratio:g}× (a busy machine). Read forwards and TPF, which are the same on any machine."
)
SEQUENTIAL, PARALLEL = "one after the other (fair timings)", "at the same time (live race)"
SWEEP_BLOCKS = (2, 4, 8, 16, 32)
SWEEP_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 1.0)


def lane_html(
    title: str,
    frame=None,
    pieces=None,
    *,
    status: str = "",
    total: int | None = None,
    ar: bool = False,
    stops=(),
) -> str:
    """A lane: its title, status and frame (`total`: its number of steps once it is done; `ar`: one token per
    forward, shown without blocks; `stops`: the model's stop tokens, shown as the end marker)."""
    head = (
        f'<div style="font-weight:600;margin-bottom:2px">{html.escape(title)}</div>'
        f'<div style="font-size:12px;color:#6b7280;min-height:1.2em">{html.escape(status)}</div>'
    )
    if frame is None:
        return head + placeholder_html("waiting")
    return head + frame_html(frame, pieces, legend=False, total=total, ar=ar, stops=stops)


@dataclass
class Timing:
    """Every timed run of one lane: what it decoded (the same each run when greedy) and how fast."""

    runs: list = field(default_factory=list)  # Stats of each finished run
    gen: object = None  # the last run's Generation, when kept (the sweep reads its answer)

    @property
    def last(self):
        return self.runs[-1]

    @property
    def speeds(self) -> list[float]:
        return [s.tokens_per_second for s in self.runs]

    @property
    def median(self) -> float:
        return statistics.median(self.speeds)

    @property
    def steady(self) -> bool:
        """Whether the repeats agree within UNSTEADY (a busy machine's timings do not)."""
        return max(self.speeds) <= UNSTEADY * min(self.speeds)

    def spread(self) -> str:
        lo, hi = min(self.speeds), max(self.speeds)
        return f"{lo:.1f}–{hi:.1f}"

    def row(self, label: str) -> dict:
        s = self.last
        return {
            "run": label,
            "strategy": s.strategy,
            "block": s.block_length,
            "steps": s.steps,
            "tokens": s.new_tokens,
            "forwards (NFE)": s.forwards,
            "TPF": round(s.tpf, 2),
            "tokens/s (median)": round(self.median, 1),
            "tokens/s (min–max)": self.spread(),
            "latency (ms, median)": round(statistics.median(r.seconds for r in self.runs) * 1000),
            "timed runs": len(self.runs),
        }


def timing_verdict(fast: Timing, slow: Timing) -> str:
    """What the timed runs of two lanes support, in words: a speed-up (or a slow-down) only when the ranges of
    their repeats do not overlap; otherwise the spread swamps the difference on this machine."""
    lo_fast, hi_fast, lo_slow, hi_slow = (
        min(fast.speeds),
        max(fast.speeds),
        min(slow.speeds),
        max(slow.speeds),
    )
    ratio = fast.median / slow.median if slow.median else float("nan")
    if lo_fast > hi_slow:
        return f"**{ratio:.2f}×** faster"
    if hi_fast < lo_slow:
        return f"**{1 / ratio:.2f}×** slower" if ratio else "slower"
    return "no measurable difference on this machine (busy CPU)"


def speedup_markdown(timings: dict[str, Timing]) -> str:
    """The headline in words: the forwards saved first (exact, the same on any machine), then what the timed
    runs support here: a speed-up only when the repeats' ranges do not overlap."""
    ar, sdar = timings.get("ar"), timings.get("sdar")
    if not ar or not sdar or not ar.runs or not sdar.runs:
        return ""
    a, b = ar.last, sdar.last
    fwd = a.forwards / b.forwards if b.forwards else float("nan")
    n = min(len(ar.runs), len(sdar.runs))
    verdict = timing_verdict(sdar, ar)
    line = (
        f"### SDAR vs AR on the same weights: **{fwd:.2f}×** fewer forwards\n"
        f"SDAR decoded the answer in {b.forwards} forwards ({b.tpf:.2f} tokens each); AR took {a.forwards}, one "
        f"token at a time. That count is the same on any machine. Timed here: {verdict} (tokens/s, median of "
        f"{n} run{'s' * (n > 1)} each: SDAR {sdar.median:.1f}, range {sdar.spread()}; AR {ar.median:.1f}, range "
        f"{ar.spread()})."
    )
    if n < 2:
        line += " One timed run cannot tell a difference from noise: time three or more."
    elif verdict.endswith("faster") and sdar.median / ar.median < fwd:
        line += " A forward over a block costs more than over one token, so the speed-up stays below the forward ratio."
    twin = timings.get("twin")
    if twin and twin.runs and twin.median:
        t = twin.last
        line += (
            f"\n\nAgainst the **AR twin** (a separately trained AR model of the same size, {t.forwards} "
            f"forwards): {timing_verdict(sdar, twin)} (SDAR {sdar.median:.1f} vs {twin.median:.1f} tokens/s, "
            f"range {twin.spread()}). Its answer may differ from SDAR's: it is another model."
        )
    return line


def lane_status(lane: Lane, timing: Timing | None = None, round_: str = "") -> str:
    if lane.state == "done":
        s = lane.gen.stats
        text = (
            f"done{round_}: {s.new_tokens} tokens, {s.forwards} forwards, TPF {s.tpf:.2f}, "
            f"{s.tokens_per_second:.1f} tokens/s, {s.seconds * 1000:.0f} ms"
        )
        if timing is not None and len(timing.runs) > 1:
            text += f" · median of {len(timing.runs)}: {timing.median:.1f} tokens/s"
        return text
    if lane.frame is not None:
        unit = "tokens" if lane.settings.strategy == "ar" else "steps"
        return f"run{round_}: {lane.builder.n} {unit} · {time.perf_counter() - lane.started:.1f} s"
    return "warming up" if lane.state == "warming" else "waiting"


@dataclass
class Board:
    """The race as the tab shows it: a title per lane, the table's label per run, the lanes of the round being
    shown, and every timed run so far."""

    lanes: dict[str, Lane]
    titles: dict[str, str]
    runs: dict[str, str]  # the table's labels: its other columns say how each run decoded
    missing_twin: str = ""  # why there is no twin lane
    timings: dict[str, Timing] = field(default_factory=dict)
    round_: str = ""  # " (run 2 of 3)" while several rounds run

    def new_round(self, index: int, total: int) -> dict[str, Lane]:
        """Fresh lanes with the same model, prompt and settings for timed run `index` (from 0) of `total`."""
        self.lanes = {n: Lane(lane.loaded, lane.ids, lane.settings) for n, lane in self.lanes.items()}
        self.finished_html = {}
        self.round_ = f" (run {index + 1} of {total})" if total > 1 else ""
        return self.lanes

    notice: str = ""  # under the headline: what the race's budget cut
    summary: tuple | None = None  # (table, headline, chart) of the timed runs so far, built once per round
    finished_html: dict[str, str] = field(default_factory=dict)  # lane name -> its HTML once it ended

    def collect(self) -> None:
        """Add the round's finished runs to the timings, and rebuild the table, headline and chart once (a chart
        costs tens of milliseconds of the interpreter: never per streamed frame)."""
        for name, lane in self.lanes.items():
            if lane.gen is not None:
                self.timings.setdefault(name, Timing()).runs.append(lane.gen.stats)
        done = {n: t for n, t in self.timings.items() if t.runs}
        table = pd.DataFrame([done[n].row(self.runs[n]) for n in LANES if n in done], columns=RACE_COLUMNS)
        chart = race_figure(
            [(self.runs[n], done[n].speeds, done[n].last.forwards) for n in LANES if n in done]
        )
        self.summary = (table, speedup_markdown(done), chart)
        self.finished_html = {}  # the statuses now name the new medians

    def outputs(self, note: str | None = None, *, lanes_only: bool = False) -> tuple:
        """AR lane, SDAR lane, twin lane, table, speedup (or `note`), chart. lanes_only: the streamed frames
        between two rounds, which leave the table, headline and chart as they are (gr.skip)."""
        htmls = tuple(self._lane_html(n) for n in LANES)
        if lanes_only:
            return (*htmls, gr.skip(), gr.skip() if note is None else note, gr.skip())
        if self.summary is None:
            self.collect()
        table, headline, chart = self.summary
        headline = headline if note is None else note
        return (*htmls, table, "\n\n".join(t for t in (headline, self.notice) if t), chart)

    def _lane_html(self, name: str) -> str:
        lane = self.lanes.get(name)
        if lane is None:
            return lane_html(self.titles[name], status=self.missing_twin)
        if name in self.finished_html:
            return self.finished_html[
                name
            ]  # a finished lane does not change until the next collect: render it once
        text = lane_html(
            self.titles[name],
            lane.frame,
            lane.pieces,
            status=lane_status(lane, self.timings.get(name), self.round_),
            total=len(lane.events) if lane.state == "done" else None,
            ar=lane.settings.strategy == "ar",
            stops=lane.loaded.stop_token_ids,
        )
        if lane.state in ("done", "stopped"):
            self.finished_html[name] = text
        return text


class Race:
    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    @explains_in_place(6, at=4)  # in the headline, under the lanes
    def race(
        self,
        prompt,
        mode,
        use_twin,
        request: gr.Request,
        repeats=DEFAULT_REPEATS,
        system=DEFAULT_SYSTEM,
        **ui,
    ):
        """Race AR and SDAR (and the AR twin) on one prompt, `repeats` timed runs each after an untimed warm-up;
        `ui` holds the decoding inputs by name. Outputs: AR lane, SDAR lane, twin lane, table, speedup, chart."""
        prompt = checked_text("prompt", prompt, MAX_MESSAGE_CHARS)
        if not prompt:
            raise gr.Error("Type a prompt first.", title="Empty prompt")
        if mode not in (SEQUENTIAL, PARALLEL):
            raise SettingsError(f"race mode must be {SEQUENTIAL!r} or {PARALLEL!r}, got {shown(mode)}")
        repeats = REPEATS.parse(repeats)
        system = checked_text("system prompt", system, MAX_SYSTEM_CHARS)
        board = self.board(DecodeRequest.from_ui(ui), conversation(system, [], prompt), use_twin)
        repeats, board.notice = self.priced(
            list(board.lanes.values()), repeats, "race", "timed runs per lane"
        )
        stop = self.studio.arm_stop(request)
        turn, budget = self.studio.turn(board.lanes["sdar"].loaded, stop), Budget(self.studio.budgets.race)
        for lane in board.lanes.values():
            lane.state = "warming"
        yield board.outputs("_Warming up each lane (untimed)…_")
        for lane in board.lanes.values():
            warm_up(Lane(lane.loaded, lane.ids, lane.settings), stop, turn, budget)
        for r in range(repeats):
            if stop.is_set():
                break
            lanes = board.new_round(r, repeats)
            # Until a timed run has finished, the headline says what the lanes are doing (not the warm-up's note).
            note = None if board.timings else f"_Timed run {r + 1} of {repeats}: decoding…_"
            # A turn on the device per lane (per round when the lanes race at the same time): visitors who used
            # the device less go first in between.
            for turn_lanes in [lanes] if mode == PARALLEL else [{n: lane} for n, lane in lanes.items()]:
                for _ in stream(turn_lanes, stop, parallel=mode == PARALLEL, turn=turn, budget=budget):
                    yield board.outputs(note, lanes_only=True)
            board.collect()
            yield board.outputs()
        if budget.exhausted:
            yield board.outputs(f"_Stopped: the race's budget of {budget.limit:,} forwards is spent._")
        elif stop.is_set() or any(lane.state == "stopped" for lane in board.lanes.values()):
            yield board.outputs("_Stopped._")
        else:
            yield board.outputs()

    def priced(self, lanes: list[Lane], repeats: int, kind: str, runs: str) -> tuple[int, str]:
        """The timed runs of `lanes` (each warmed up once) that fit the `kind` budget (app/budget.py), at most
        `repeats`, and a note when that is fewer; OverBudget when not even one run fits."""
        budget = getattr(self.studio.budgets, kind)
        per_run = sum(lane.settings.forwards_bound(len(lane.ids)) for lane in lanes)
        warm = sum(warm_up_bound(lane) for lane in lanes)
        fits = runs_within(budget, warm, per_run, repeats)
        if fits == 0:
            raise OverBudget(
                f"this {kind} may take up to {warm + per_run:,} forwards with one timed run; a {kind} "
                f"may take at most {budget:,} here: "
                + (
                    "lower max new tokens, raise the block length, or leave the AR twin out"
                    if kind == "race"
                    else "lower the new tokens or pick fewer block lengths or thresholds"
                )
            )
        if fits == repeats:
            return repeats, ""
        return fits, (
            f"_Cut to {fits} {runs} (of {repeats}): {repeats} would take up to "
            f"{warm + repeats * per_run:,} forwards, over the {kind} budget of {budget:,}._"
        )

    def board(self, req: DecodeRequest, messages: list[dict], use_twin: bool) -> Board:
        """AR and SDAR lanes on the same weights, and AR on the twin (sdar-X -> ar-X) when asked and present, each
        answering `messages`."""
        loaded = self.studio.ready(req.model_name)
        if not loaded.is_sdar:
            raise gr.Error(
                f"{loaded.display_name} is an autoregressive model: the race needs an SDAR model "
                "(it decodes the same weights both ways)."
            )
        s = req.settings
        ids, _ = prompt_ids(loaded.tokenizer, messages)
        lanes = {"ar": Lane(loaded, ids, s.as_ar()), "sdar": Lane(loaded, ids, s)}
        titles = {
            "ar": f"AR on the same weights ({loaded.display_name})",
            "sdar": f"SDAR {s.strategy}, block {s.block_length}, steps {s.steps}"
            + (f", τ={s.threshold:g}" if s.strategy == "dynamic" else ""),
            "twin": "AR twin",
        }
        twin_name = ar_twin_name(req.model_name)
        missing = "AR twin not included" if not use_twin else "no AR twin next to this model (sdar-X ↔ ar-X)"
        if use_twin and twin_name:
            lanes["twin"], _ = self.studio.lane(
                replace(req, model_name=twin_name, settings=s.as_ar()), messages
            )
            titles["twin"] = f"AR twin ({lanes['twin'].loaded.display_name})"
        runs = {
            "ar": f"AR ({loaded.display_name})",
            "sdar": f"SDAR ({loaded.display_name})",
            "twin": titles["twin"],
        }
        return Board(lanes, titles, runs, missing)

    @explains_in_place(4, at=0)  # above the charts
    def sweep(
        self,
        prompt,
        model_name,
        block_lengths,
        thresholds,
        max_new_tokens,
        system=DEFAULT_SYSTEM,
        request: gr.Request = None,
    ):
        """Dynamic decoding over block lengths x thresholds (steps = block length), and AR once.
        Outputs: a note (why it stopped or was refused), TPF figure, tokens/s figure, table."""
        prompt = checked_text("prompt", prompt, MAX_MESSAGE_CHARS)
        system = checked_text("system prompt", system, MAX_SYSTEM_CHARS)
        if not prompt:
            raise gr.Error("Type a prompt first.", title="Empty prompt")
        blocks = sorted(
            {
                _choice("block length", b, SWEEP_BLOCKS, lambda v: int(float(v)))
                for b in _picked("block lengths", block_lengths)
            }
        )
        thrs = sorted(
            {_choice("threshold", t, SWEEP_THRESHOLDS, float) for t in _picked("thresholds", thresholds)}
        )
        if not blocks or not thrs:
            raise gr.Error("Pick at least one block length and one threshold for the sweep.")
        base = DecodeSettings.from_ui(
            {"block_length": max(blocks), "steps": max(blocks), "max_new_tokens": max_new_tokens}
        )
        loaded = self.studio.ready(model_name)
        if not loaded.is_sdar:
            raise gr.Error(
                f"{loaded.display_name} is an autoregressive model: the sweep needs an SDAR model."
            )
        ids, _ = prompt_ids(loaded.tokenizer, conversation(system, [], prompt))
        runs = [("ar", None, None)] + [("sdar", b, t) for b in blocks for t in thrs]
        lanes = [
            Lane(
                loaded,
                ids,
                base.as_ar() if kind == "ar" else replace(base, block_length=b, steps=b, threshold=t),
            )
            for kind, b, t in runs
        ]
        repeats, cut = self.priced(lanes, SWEEP_REPEATS, "sweep", "timed runs per point")
        if cut:
            yield cut, gr.skip(), gr.skip(), gr.skip()
        stop = self.studio.arm_stop(request)
        turn, budget = self.studio.turn(loaded, stop), Budget(self.studio.budgets.sweep)
        records, ar, note, unsteady = [], None, cut, 0
        for (kind, b, t), lane in zip(runs, lanes):
            if stop.is_set() or budget.exhausted:
                why = (
                    "stopped"
                    if stop.is_set()
                    else f"stopped (its budget of {budget.limit:,} forwards is spent)"
                )
                note = f"Sweep {why} after {len(records) + (ar is not None)} of {len(runs)} points."
                break
            timing = timed_runs(lane, stop, repeats, turn, budget)
            if timing is None:
                continue  # stopped: the loop's next turn says so
            st = timing.last
            rec = {
                "block length": b or 1,
                "threshold": t,
                "tokens": st.new_tokens,
                "forwards": st.forwards,
                "TPF": round(st.tpf, 3),
                "tokens/s": round(timing.median, 1),
                "spread": timing.spread(),
                "latency (ms)": round(statistics.median(r.seconds for r in timing.runs) * 1000),
                "answer ends": _last_line(loaded, timing.gen),
            }
            if kind == "ar":
                ar, unsteady = rec, int(not timing.steady)
                continue
            records.append(rec)
            unsteady += not timing.steady
            tpf, speed = sweep_figures(records, ar)
            shown_note = "  \n".join(n for n in (cut, self.sweep_note(unsteady, len(records) + 1)) if n)
            yield shown_note, tpf, speed, sweep_table([ar] + records)
        if note or not records:
            tpf, speed = sweep_figures(records, ar)
            note = "  \n".join(
                n for n in (note, self.sweep_note(unsteady, len(records) + (ar is not None))) if n
            )
            yield note, tpf, speed, sweep_table([r for r in [ar] + records if r])

    @staticmethod
    def sweep_note(unsteady: int, total: int) -> str:
        return UNSTEADY_NOTE.format(n=unsteady, total=total, ratio=UNSTEADY) if unsteady else ""

    @staticmethod
    def gpu_results(run: str | None = None):
        """One benchmark run (`run`: its name in the picker; the newest when None or unknown). Outputs: figure,
        table, notes (that run's machine and ceiling; what was skipped goes to the server log), the picker."""
        rows, machines, notes = read_results()
        for note in notes:  # files the reader skipped: for the person running the studio, not the visitor
            log.info("benchmark results: %s", note)
        names = [m.name for m in machines]
        m = next((m for m in machines if m.name == run), machines[0] if machines else None)
        if m is None:
            return gpu_figure(rows, None), gpu_table([]), "", gr.Dropdown(choices=[], value=None)
        shown = [r for r in rows if r["run"] == m.run]
        line = (
            f"**{m.run}**: {m.label}"
            + (f" · {m.arch}" if m.arch else "")
            + (
                f" · {m.bandwidth_GBps:.0f} GB/s measured, AR ceiling {m.ar_ceiling_tps:.0f} tokens/s"
                if m.bandwidth_GBps and m.ar_ceiling_tps
                else ""
            )
            + f" · {len(shown)} rows · {len(machines)} runs in benchmarks/results/, one shown at a time"
        )
        return gpu_figure(rows, m), gpu_table(shown), line, gr.Dropdown(choices=names, value=m.name)


def warm_up_bound(lane: Lane) -> int:
    """The forwards of a lane's untimed warm-up (streaming.warm_up: until its second block starts)."""
    s = lane.settings
    return replace(s, max_new_tokens=min(s.max_new_tokens, 2 * s.block_length)).forwards_bound(len(lane.ids))


def timed_runs(lane: Lane, stop, repeats: int, turn=None, budget=None) -> Timing | None:
    """One untimed warm-up, then `repeats` timed decodes of the lane (not streamed), each a turn on the device;
    None when stopped first (or when `budget` ran out)."""
    warm_up(Lane(lane.loaded, lane.ids, lane.settings), stop, turn, budget)
    timing = Timing()
    for _ in range(repeats):
        gen = decode_alone(Lane(lane.loaded, lane.ids, lane.settings), stop, turn, budget)
        if gen is None:
            return None
        timing.runs.append(gen.stats)
        timing.gen = gen
    return timing


def _last_line(loaded, gen, width: int = 40) -> str:
    """The answer's last line, shortened: where a too-large block or too-low threshold shows (`Answer: 85`
    turning into `Answer::18`), which TPF alone does not."""
    text = loaded.tokenizer.decode(gen.row_tokens(0), skip_special_tokens=True).strip()
    last = text.splitlines()[-1].strip() if text else ""
    return last if len(last) <= width else "…" + last[-width + 1 :]


def _picked(name, values) -> list:
    """The sweep's checkbox values: a list (None: nothing picked)."""
    if values is None:
        return []
    if not isinstance(values, (list, tuple)):
        raise SettingsError(f"{name} must be a list of choices, got {shown(values)}")
    return list(values)


def _choice(name, value, choices, cast):
    """cast(value) if it is one of choices, else a SettingsError naming them."""
    try:
        v = cast(value)
    except (TypeError, ValueError):
        v = None
    if v not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(map(str, choices))}, got {shown(value)}")
    return v
