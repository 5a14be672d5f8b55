"""Trace -> what the server renders: the race lanes' HTML frames, the per-block table, stats lines, and the frame
model (FrameBuilder, watch_frames) that the page's player (player.js) follows and is tested against.

Pure functions of StepEvents (sdar_core/trace.py) and of `pieces`, a map from token id to the text it
prints as. Nothing here runs a model or needs a tokenizer, so every function is tested on events built
by hand (tests/test_app_render.py).

A *frame* is the decoder's state after one global step: the answer committed in finished blocks, plus
the block in flight with its still-masked positions, the positions committed at this very step and the
confidence each committed token had when it was chosen.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go

from sdar_core.trace import Stats, StepEvent

MASK_GLYPH = "▒"


@dataclass
class Cell:
    """One position of the answer as a frame shows it."""

    position: int  # absolute position in the row (prompt included)
    token: int | None  # None while masked
    confidence: float | None  # at commit time; for a masked cell, its best candidate's confidence now
    step: int | None  # global step index that committed it
    fresh: bool = False  # committed by the frame's own step
    candidate: int | None = None  # best candidate of a masked cell at this step
    discarded: bool = False  # after the row's first stop token (not part of the answer)


@dataclass
class Frame:
    step: int  # global step index (index into the row's events), -1 before any step
    done: list[Cell] = field(default_factory=list)  # answer tokens of finished blocks
    block: list[Cell] = field(default_factory=list)  # the block in flight (prompt positions left out)
    block_index: int | None = None
    block_step: int | None = None
    final: bool = False  # the block in flight is complete after this step
    opening: bool = False  # the block in flight before its first step: every position still masked


def answer_start(events: list[StepEvent]) -> int:
    """Absolute position of the first generated token: the first block's start plus its prompt tail."""
    if not events:
        return 0
    first = events[0]
    return first.block_start + len(first.prompt_positions)


def kept_answer_end(events: list[StepEvent], length: int | None) -> int | None:
    """Absolute position after the kept answer of `length` tokens (None when unknown: a stopped run)."""
    return answer_start(events) + length if length is not None and events else None


class FrameBuilder:
    """Replays events one at a time (the live view pushes as they arrive; the replay pushes a prefix);
    `finish` marks what the last frame shows after the kept answer, without replaying the trace."""

    def __init__(self, answer_end: int | None = None, stop_ids: Iterable[int] = ()) -> None:
        self.answer_end = answer_end  # absolute end of the kept answer; positions >= it are discarded
        # While the decode runs, the first committed stop token bounds the answer already: what follows it is
        # discarded whatever the positions before it become.
        self.stop_ids = frozenset(stop_ids)
        self.done: list[Cell] = []
        self.block: list[Cell] = []
        self.committed: dict[int, Cell] = {}  # offset -> cell, in the block in flight
        self.current: tuple[int, int] | None = None  # (block, block_start) in flight
        self.last: StepEvent | None = None
        self.frame: Frame | None = None  # the latest frame pushed
        self.n = 0

    def push(self, e: StepEvent) -> Frame:
        self._enter(e)
        for off, conf in zip(e.committed, e.committed_confidence):
            self.committed[off] = Cell(e.block_start + off, e.block_state[off], conf, self.n)
            if e.block_state[off] in self.stop_ids:
                self.answer_end = min(self.answer_end or math.inf, e.block_start + off + 1)
        self.last = e
        self.frame = Frame(
            step=self.n,
            done=list(self.done),
            block=self._block_cells(e, fresh_step=self.n),
            block_index=e.block,
            block_step=e.step,
            final=e.final,
        )
        self.n += 1
        return self.frame

    def opening(self, e: StepEvent) -> Frame:
        """The frame just before step `e` opens its block: the finished blocks, then the block fully masked
        (each position with the model's best guess and confidence at that step). Pushes nothing."""
        self._enter(e)
        prompt = set(e.prompt_positions)
        end = math.inf if self.answer_end is None else self.answer_end
        block = [
            Cell(
                e.block_start + off,
                None,
                e.masked_confidence.get(off),
                None,
                candidate=e.candidates.get(off),
                discarded=e.block_start + off >= end,
            )
            for off in range(len(e.block_state))
            if off not in prompt
        ]
        return Frame(step=self.n, done=list(self.done), block=block, block_index=e.block, opening=True)

    def _enter(self, e: StepEvent) -> None:
        """Move the block in flight to the finished ones when `e` belongs to the next block."""
        if self.current is not None and self.current != (e.block, e.block_start):
            self.done.extend(c for c in self._block_cells(self.last, fresh_step=None) if c.token is not None)
            self.committed = {}
        self.current = (e.block, e.block_start)

    def finish(self, answer_end: int | None) -> Frame | None:
        """The last frame, its positions from `answer_end` on marked discarded (they follow the stop token)."""
        self.answer_end = answer_end
        if self.frame is not None:
            for cell in self.frame.done + self.frame.block:
                cell.discarded = answer_end is not None and cell.position >= answer_end
        return self.frame

    def _block_cells(self, e: StepEvent, fresh_step: int | None) -> list[Cell]:
        prompt = set(e.prompt_positions)
        cells = []
        for off, _tok in enumerate(e.block_state):
            if off in prompt:
                continue
            pos = e.block_start + off
            if off in self.committed:
                c = self.committed[off]
                cell = Cell(pos, c.token, c.confidence, c.step, fresh=c.step == fresh_step)
            else:  # still masked after this step
                cell = Cell(pos, None, e.masked_confidence.get(off), None, candidate=e.candidates.get(off))
            cell.discarded = self.answer_end is not None and pos >= self.answer_end
            cells.append(cell)
        return cells


def watch_frames(events: list[StepEvent], answer_end: int | None = None) -> list[Frame]:
    """What a replay shows: before each block's first step its opening frame (every position masked), then the
    frame after every step. A block the model fills in one step still shows its masks for one frame."""
    builder, out = FrameBuilder(answer_end), []
    for e in events:
        if e.step == 0:
            out.append(builder.opening(e))
        out.append(builder.push(e))
    return out


def frame_at(
    events: list[StepEvent], step: int, answer_end: int | None = None, stop_ids: Iterable[int] = ()
) -> Frame:
    """The frame after global step `step` (clamped to the trace)."""
    if not events:
        return Frame(step=-1)
    step = max(0, min(int(step), len(events) - 1))
    builder = FrameBuilder(answer_end, stop_ids)
    for e in events[: step + 1]:
        frame = builder.push(e)
    return frame


# --- HTML ----------------------------------------------------------------------------------------------


def confidence_colour(conf: float | None) -> str:
    """Background colour of a token: red (0) through yellow to green (1), light enough to read on."""
    if conf is None or math.isnan(conf):
        return "#e5e7eb"
    c = max(0.0, min(1.0, float(conf)))
    return f"hsl({round(120 * c)}, 75%, 82%)"


def piece_text(pieces: Mapping[int, str], token: int) -> str:
    return pieces.get(token, f"<{token}>")


def _cell_html(cell: Cell, pieces: Mapping[int, str], stops: frozenset = frozenset()) -> str:
    if cell.token in stops:  # the stop token: a quiet end marker, not a token of the answer
        return f'<span class="sdar-end" title="{html.escape(END_TITLE)}">{END_MARK}</span>'
    if cell.token is None:
        cand = "" if cell.candidate is None else f" · best guess {piece_text(pieces, cell.candidate)!r}"
        conf = "" if cell.confidence is None else f" ({cell.confidence:.2f})"
        title = f"position {cell.position}: masked{cand}{conf}"
        return f'<span class="sdar-tok sdar-mask" title="{html.escape(title)}">{MASK_GLYPH}</span>'
    text = piece_text(pieces, cell.token)
    classes = (
        ["sdar-tok"] + (["sdar-fresh"] if cell.fresh else []) + (["sdar-discarded"] if cell.discarded else [])
    )
    style = f"background:{confidence_colour(cell.confidence)}"
    if cell.fresh:
        style += ";outline:2px solid #2563eb;font-weight:600"
    if cell.discarded:
        style += ";opacity:0.35;text-decoration:line-through"
    conf = "?" if cell.confidence is None else f"{cell.confidence:.2f}"
    title = f"position {cell.position} · confidence {conf} · committed at step {cell.step + 1}"
    shown = html.escape(text).replace("\n", "↵<br>") or "&nbsp;"
    return f'<span class="{" ".join(classes)}" style="{style}" title="{html.escape(title)}">{shown}</span>'


TOKEN_CSS = """
<style>
.sdar-frame{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:14px;line-height:2.0;
  white-space:pre-wrap;word-break:break-word;padding:8px;border-radius:8px;border:1px solid #d1d5db;min-height:3em}
.sdar-tok{border-radius:3px;padding:1px 1px;margin:0 1px;color:#111827}
.sdar-mask{background:#374151;color:#9ca3af;padding:1px 3px}
.sdar-block{border:1px dashed #2563eb;border-radius:5px;padding:3px 2px;margin-left:2px;background:#eff6ff}
.sdar-end{font-size:11px;color:#6b7280;font-style:italic;margin:0 3px;white-space:nowrap}
.sdar-legend{font-size:12px;color:#6b7280;margin-top:4px}
.sdar-legend .sdar-tok{font-size:12px}
</style>"""


END_MARK = "⏎ end"
END_TITLE = "the stop token: the answer ends here"


def legend_html() -> str:
    swatches = "".join(
        f'<span class="sdar-tok" style="background:{confidence_colour(c)}">{c:.1f}</span>'
        for c in (0.1, 0.3, 0.5, 0.7, 0.9)
    )
    return (
        f'<div class="sdar-legend">confidence {swatches} &nbsp; <span class="sdar-tok sdar-mask">{MASK_GLYPH}</span>'
        ' still masked &nbsp; <span class="sdar-tok" style="outline:2px solid #2563eb">new</span> committed at '
        'this step &nbsp; <span class="sdar-block">&nbsp;…&nbsp;</span> block in flight &nbsp; '
        f'<span class="sdar-end">{END_MARK}</span> the answer ends &nbsp; '
        '<span class="sdar-tok" style="opacity:0.35;text-decoration:line-through">after</span> decoded after '
        "the end: dropped</div>"
    )


def step_label(step: int, total: int | None = None) -> str:
    """A global step as every view counts it: from 1, `step 3 of 15` once the total is known."""
    return f"step {step + 1}" + (f" of {total}" if total else "")


def frame_where(frame: Frame, total: int | None = None, ar: bool = False) -> str:
    """Where a frame is in the decode, in words (steps and blocks counted from 1). An AR decode has no blocks
    and nothing masked: its frames count tokens, one per forward."""
    if frame.block_index is None:
        return ""
    if ar:
        return f"token {frame.step + 1}" + (f" of {total}" if total else "") + " (one token per forward)"
    if frame.opening:
        masked = sum(c.token is None for c in frame.block)
        return (
            f"block {frame.block_index + 1} opens, {masked} positions masked · next: "
            f"{step_label(frame.step, total)}"
        )
    return (
        f"{step_label(frame.step, total)} · block {frame.block_index + 1}, its denoising step "
        f"{frame.block_step + 1}" + (" (block done: nothing masked)" if frame.final else "")
    )


def frame_html(
    frame: Frame,
    pieces: Mapping[int, str],
    *,
    title: str = "",
    legend: bool = True,
    total: int | None = None,
    ar: bool = False,
    stops: Iterable[int] = (),
) -> str:
    """The answer so far (finished blocks) followed by the block in flight, boxed, as one HTML fragment.
    `total`: the decode's number of steps, when known; `ar`: a one-token-per-forward decode (no block box);
    `stops`: the stop tokens, shown as the answer's end marker."""
    head = ""
    if title or frame.block_index is not None:
        where = frame_where(frame, total, ar)
        head = (
            f'<div style="font-size:12px;color:#6b7280;margin-bottom:4px">'
            f"{html.escape(title)}{' — ' if title and where else ''}{where}</div>"
        )
    stops = frozenset(stops)
    done = "".join(_cell_html(c, pieces, stops) for c in frame.done + (frame.block if ar else []))
    block = "".join(_cell_html(c, pieces, stops) for c in frame.block)
    block = f'<span class="sdar-block">{block}</span>' if frame.block and not ar else ""
    body = done + block or '<span style="color:#9ca3af">(nothing generated yet)</span>'
    return f'{TOKEN_CSS}{head}<div class="sdar-frame">{body}</div>{legend_html() if legend else ""}'


def frame_text(
    frame: Frame, pieces: Mapping[int, str], hidden: Iterable[int] = (), masks: bool = True
) -> str:
    """The frame as plain text for the chat bubble: masked positions as the mask glyph (left out without
    `masks`), `hidden` tokens (stop tokens) and discarded positions left out."""
    hidden = set(hidden)
    out = []
    for c in frame.done + frame.block:
        if c.discarded or c.token in hidden or (c.token is None and not masks):
            continue
        out.append(MASK_GLYPH if c.token is None else piece_text(pieces, c.token))
    return "".join(out)


def placeholder_html(message: str) -> str:
    return f'{TOKEN_CSS}<div class="sdar-frame" style="color:#6b7280">{html.escape(message)}</div>'


# --- charts --------------------------------------------------------------------------------------------


def empty_figure(message: str, height: int = 320) -> go.Figure:
    """A blank plotly figure that shows only `message` (what a chart shows before there is data)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(height=height, template="plotly_white", xaxis_visible=False, yaxis_visible=False)
    return fig


# --- per-block table -----------------------------------------------------------------------------------

BLOCK_COLUMNS = [
    "block",
    "start",
    "tokens",
    "steps",
    "global steps",
    "tokens per step (mean)",
    "min confidence",
]


def block_table(events: list[StepEvent]) -> pd.DataFrame:
    """One row per block (counted from 1): where it starts, how many tokens it produced, the denoising steps it
    used (and which global steps they were, as the slider counts them) and how many tokens each step committed
    (a static schedule shows ceil(L/T) per step)."""
    rows: dict[tuple[int, int], dict] = {}
    for i, e in enumerate(events):
        key = (e.block, e.block_start)
        r = rows.setdefault(
            key, {"block": e.block + 1, "start": e.block_start, "per_step": [], "confs": [], "first": i + 1}
        )
        r["per_step"].append(len(e.committed))
        r["confs"].extend(e.committed_confidence)
    out = []
    for r in rows.values():
        tokens = sum(r["per_step"])
        out.append(
            {
                "block": r["block"],
                "start": r["start"],
                "tokens": tokens,
                "steps": len(r["per_step"]),
                "global steps": _span(r["first"], r["first"] + len(r["per_step"]) - 1),
                "tokens per step (mean)": f"{' · '.join(map(str, r['per_step']))} ({tokens / len(r['per_step']):.2f})",
                "min confidence": round(min(r["confs"]), 3) if r["confs"] else None,
            }
        )
    return pd.DataFrame(out, columns=BLOCK_COLUMNS)


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}–{last}"


# --- stats ---------------------------------------------------------------------------------------------

GLOSSARY = (
    "NFE: forward passes of the model (number of function evaluations) · TPF: tokens per forward, new "
    "tokens / NFE (AR decoding: 1) · τ: the dynamic schedule's confidence threshold: a masked position is "
    "committed once the model's confidence in it exceeds τ (at least one per step)"
)


def stats_markdown(stats: Stats | None, note: str = "") -> str:
    """The line under an answer: NFE, TPF, tokens/s, latency."""
    if stats is None:
        return note
    line = (
        f"**NFE** {stats.forwards} (+{stats.prefill_forwards} prefill) · **TPF** {stats.tpf:.2f} · "
        f"**{stats.tokens_per_second:.1f}** tokens/s · **latency** {stats.seconds * 1000:.0f} ms · "
        f"{stats.new_tokens} tokens · `{stats.strategy}`, block {stats.block_length}, steps {stats.steps}  \n"
        f"<small>{GLOSSARY}</small>"
    )
    return f"{line}  \n{note}" if note else line


def model_markdown(summary: Mapping, *, name: str, context: int, stop_tokens: Iterable[str] = ()) -> str:
    """The loaded model's card: family, size, block size, device, dtype."""
    params = summary.get("parameters", 0)
    size = (
        f"{params / 1e9:.2f} B"
        if params >= 1e9
        else f"{params / 1e6:.1f} M"
        if params >= 1e6
        else f"{params / 1e3:.0f} K"
    )
    kind = (
        "SDAR (block diffusion)"
        if str(summary.get("model_type", "")).startswith("sdar")
        else "autoregressive"
    )
    experts = f" · {summary['experts']} experts" if summary.get("experts") else ""
    stops = ", ".join(f"`{s}`" for s in stop_tokens)
    return (
        f"**{html.escape(name)}** — {kind}  \n"
        f"`{summary.get('model_type')}` · {size} parameters · {summary.get('layers')} layers × "
        f"{summary.get('hidden_size')}{experts}  \n"
        f"block size **{summary.get('block_size')}** · context {context}  \n"
        f"device **{summary.get('device')}** · dtype {summary.get('dtype')}"
        + (" · float8 projections" if summary.get("weights") == "fp8" else "")
        + (f"  \nstops at {stops}" if stops else "")
        + licence_line(summary)
    )


def licence_line(summary: Mapping) -> str:
    """The weights' licence from the folder's model card, and why when the card says: '' without a card."""
    licence, note = summary.get("license"), summary.get("license_note")
    if not licence:
        return ""
    return f"  \nlicence **{html.escape(str(licence))}**" + (f": {html.escape(str(note))}" if note else "")
