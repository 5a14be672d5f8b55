"""The AR vs SDAR tab: one prompt decoded one token per forward (`ar`) and by block diffusion on the same
weights (and `ar` on the AR twin when there is one), streamed side by side; a sweep over block lengths and
thresholds (TPF and tokens/s, the paper's Figures 3-4); the GPU measurements of the benchmark."""
from __future__ import annotations

import html
import logging
import time
from dataclasses import dataclass, replace

import gradio as gr
import pandas as pd

from .benchmarks import read_results
from .charts import gpu_figure, gpu_table, sweep_figures, sweep_table
from .errors import shows_errors
from .prompting import conversation, prompt_ids
from .registry import ar_twin_name
from .render import frame_html, placeholder_html, stats_row
from .settings import MAX_MESSAGE_CHARS, DecodeRequest, DecodeSettings, SettingsError, checked_text, shown
from .streaming import Lane, decode_alone, stream
from .studio import Studio

log = logging.getLogger(__name__)

LANES = ("ar", "sdar", "twin")
RACE_COLUMNS = ["run", "strategy", "block", "steps", "tokens", "forwards (NFE)", "TPF", "tokens/s", "latency (ms)"]
SEQUENTIAL, PARALLEL = "one after the other (fair timings)", "at the same time (live race)"
SWEEP_BLOCKS = (2, 4, 8, 16, 32)
SWEEP_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 1.0)


def lane_html(title: str, frame=None, pieces=None, *, status: str = "") -> str:
    head = (f'<div style="font-weight:600;margin-bottom:2px">{html.escape(title)}</div>'
            f'<div style="font-size:12px;color:#6b7280;min-height:1.2em">{html.escape(status)}</div>')
    if frame is None:
        return head + placeholder_html("waiting")
    return head + frame_html(frame, pieces, legend=False)


def speedup_markdown(stats: dict) -> str:
    """The headline: SDAR's tokens/s and forwards against AR on the same weights."""
    ar, sdar = stats.get("ar"), stats.get("sdar")
    if not ar or not sdar:
        return ""
    speed = sdar.tokens_per_second / ar.tokens_per_second if ar.tokens_per_second else float("nan")
    fwd = ar.forwards / sdar.forwards if sdar.forwards else float("nan")
    line = (f"### SDAR vs AR on the same weights: **{speed:.2f}×** tokens/s · {ar.forwards} → {sdar.forwards} "
            f"forwards (**{fwd:.2f}×**, TPF {sdar.tpf:.2f} vs {ar.tpf:.2f})")
    twin = stats.get("twin")
    if twin and twin.tokens_per_second:
        line += f"  \nvs the AR twin: {sdar.tokens_per_second / twin.tokens_per_second:.2f}× tokens/s"
    return line


def lane_status(lane: Lane) -> str:
    if lane.state == "done":
        s = lane.gen.stats
        return (f"done: {s.new_tokens} tokens, {s.forwards} forwards, TPF {s.tpf:.2f}, "
                f"{s.tokens_per_second:.1f} tokens/s, {s.seconds * 1000:.0f} ms")
    if lane.frame is not None:
        return f"{lane.builder.n} forwards · {time.perf_counter() - lane.started:.1f} s"
    return "waiting"


@dataclass
class Board:
    """The race as the tab shows it: a title per lane, the table's label per run, and the lanes racing."""

    lanes: dict[str, Lane]
    titles: dict[str, str]
    runs: dict[str, str]  # the table's labels: its other columns say how each run decoded
    missing_twin: str = ""  # why there is no twin lane

    def outputs(self, note: str | None = None) -> tuple:
        """AR lane, SDAR lane, twin lane, table, speedup (or `note`)."""
        stats = {name: lane.gen.stats for name, lane in self.lanes.items() if lane.gen is not None}
        table = pd.DataFrame([stats_row(self.runs[n], stats[n]) for n in LANES if n in stats], columns=RACE_COLUMNS)
        return (*(self._lane_html(n) for n in LANES), table, speedup_markdown(stats) if note is None else note)

    def _lane_html(self, name: str) -> str:
        lane = self.lanes.get(name)
        if lane is None:
            return lane_html(self.titles[name], status=self.missing_twin)
        return lane_html(self.titles[name], lane.frame, lane.pieces, status=lane_status(lane))


class Race:
    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    @shows_errors
    def race(self, prompt, mode, use_twin, request: gr.Request, **ui):
        """Race AR and SDAR (and the AR twin) on one prompt; `ui` holds the decoding inputs by name.
        Outputs: AR lane, SDAR lane, twin lane, table, speedup."""
        prompt = checked_text("prompt", prompt, MAX_MESSAGE_CHARS)
        if not prompt:
            raise gr.Error("Type a prompt first.", title="Empty prompt")
        if mode not in (SEQUENTIAL, PARALLEL):
            raise SettingsError(f"race mode must be {SEQUENTIAL!r} or {PARALLEL!r}, got {shown(mode)}")
        board = self.board(DecodeRequest.from_ui(ui), prompt, use_twin)
        yield board.outputs()
        for _ in stream(board.lanes, self.studio.arm_stop(request), parallel=mode == PARALLEL):
            yield board.outputs()
        if any(lane.state == "stopped" for lane in board.lanes.values()):
            yield board.outputs("_Stopped._")

    def board(self, req: DecodeRequest, prompt: str, use_twin: bool) -> Board:
        """AR and SDAR lanes on the same weights, and AR on the twin (sdar-X -> ar-X) when asked and present."""
        loaded = self.studio.registry.get(req.model_name)
        if not loaded.is_sdar:
            raise gr.Error(f"{loaded.display_name} is an autoregressive model: the race needs an SDAR model "
                           "(it decodes the same weights both ways).")
        messages, s = conversation("", [], prompt), req.settings
        ids, _ = prompt_ids(loaded.tokenizer, messages)
        lanes = {"ar": Lane(loaded, ids, s.as_ar()), "sdar": Lane(loaded, ids, s)}
        titles = {"ar": f"AR on the same weights ({loaded.display_name})",
                  "sdar": f"SDAR {s.strategy}, block {s.block_length}, steps {s.steps}"
                          + (f", τ={s.threshold:g}" if s.strategy == "dynamic" else ""),
                  "twin": "AR twin"}
        twin_name = ar_twin_name(req.model_name)
        missing = "AR twin not included" if not use_twin else "no AR twin next to this model (sdar-X ↔ ar-X)"
        if use_twin and twin_name:
            lanes["twin"], _ = self.studio.lane(replace(req, model_name=twin_name, settings=s.as_ar()), messages)
            titles["twin"] = f"AR twin ({lanes['twin'].loaded.display_name})"
        runs = {"ar": f"AR ({loaded.display_name})", "sdar": f"SDAR ({loaded.display_name})", "twin": titles["twin"]}
        return Board(lanes, titles, runs, missing)

    @shows_errors
    def sweep(self, prompt, model_name, block_lengths, thresholds, max_new_tokens, request: gr.Request):
        """Dynamic decoding over block lengths x thresholds (steps = block length), and AR once.
        Outputs: TPF figure, tokens/s figure, table."""
        prompt = checked_text("prompt", prompt, MAX_MESSAGE_CHARS)
        if not prompt:
            raise gr.Error("Type a prompt first.", title="Empty prompt")
        blocks = sorted({_choice("block length", b, SWEEP_BLOCKS, lambda v: int(float(v)))
                         for b in _picked("block lengths", block_lengths)})
        thrs = sorted({_choice("threshold", t, SWEEP_THRESHOLDS, float) for t in _picked("thresholds", thresholds)})
        if not blocks or not thrs:
            raise gr.Error("Pick at least one block length and one threshold for the sweep.")
        base = DecodeSettings.from_ui({"block_length": max(blocks), "steps": max(blocks),
                                       "max_new_tokens": max_new_tokens})
        loaded = self.studio.registry.get(model_name)
        if not loaded.is_sdar:
            raise gr.Error(f"{loaded.display_name} is an autoregressive model: the sweep needs an SDAR model.")
        ids, _ = prompt_ids(loaded.tokenizer, conversation("", [], prompt))
        stop = self.studio.arm_stop(request)
        runs = [("ar", None, None)] + [("sdar", b, t) for b in blocks for t in thrs]
        records, ar = [], None
        for kind, b, t in runs:
            if stop.is_set():
                gr.Warning("Sweep stopped.")
                break
            s = base.as_ar() if kind == "ar" else replace(base, block_length=b, steps=b, threshold=t)
            gen = decode_alone(Lane(loaded, ids, s), stop)
            if gen is None:
                continue  # stopped while waiting for the device: the loop's next turn says so
            st = gen.stats
            rec = {"block length": b or 1, "threshold": t, "tokens": st.new_tokens, "forwards": st.forwards,
                   "TPF": round(st.tpf, 3), "tokens/s": round(st.tokens_per_second, 1),
                   "latency (ms)": round(st.seconds * 1000), "answer ends": _last_line(loaded, gen)}
            if kind == "ar":
                ar = rec
                continue
            records.append(rec)
            tpf, speed = sweep_figures(records, ar)
            yield tpf, speed, sweep_table([ar] + records)
        if not records:
            tpf, speed = sweep_figures([], ar)
            yield tpf, speed, sweep_table([ar] if ar else [])

    @staticmethod
    def gpu_results():
        """Outputs: figure, table, notes (one line per benchmark run; what was skipped goes to the server log)."""
        rows, machines, notes = read_results()
        lines = [f"**{m.run}**: {m.label}" + (f" · {m.arch}" if m.arch else "")
                 + (f" · {m.bandwidth_GBps:.0f} GB/s measured, AR ceiling {m.ar_ceiling_tps:.0f} tokens/s"
                    if m.bandwidth_GBps and m.ar_ceiling_tps else "")
                 + f" · {sum(r['run'] == m.run for r in rows)} rows" for m in machines]
        for note in notes:  # files the reader skipped: for the person running the studio, not the visitor
            log.info("benchmark results: %s", note)
        return gpu_figure(rows, machines), gpu_table(rows), "  \n".join(lines)


def _last_line(loaded, gen, width: int = 40) -> str:
    """The answer's last line, shortened: where a too-large block or too-low threshold shows (`Answer: 85`
    turning into `Answer::18`), which TPF alone does not."""
    text = loaded.tokenizer.decode(gen.row_tokens(0), skip_special_tokens=True).strip()
    last = text.splitlines()[-1].strip() if text else ""
    return last if len(last) <= width else "…" + last[-width + 1:]


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
