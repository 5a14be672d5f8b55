"""What the page receives of a decode: compact step events, drawn in the browser (player.js).

A `Feed` is the value of one DenoisePlayer: per step, the positions it committed with their token ids and
confidences, and the positions still masked before it with the model's best guess and its confidence; each
token's printed text once. The server sends it as the decode runs, and the page draws the live view, the watch
replay, the scrubber and the heatmap from it. Nothing here sleeps for display.

The events travel as one growing text, `log`: a line of JSON per step, and a line `{"pieces": {token id: text}}`
before the steps whose tokens it prints. Gradio walks every output it sends in Python, element by element (file
URLs, the diff against the last one); as a list of steps the feed cost it work in proportion to the answer on every
message, all of it on the interpreter the decode loop needs. As text it is one element, and the change Gradio sends
is the text appended since the last message. `expand` (here) and player.js's `expand` read it back.

One step, as sent (`compact`; JS reads the same keys):
    b  block index (from 0)           s  step inside the block (from 0)     at  block_start (absolute position)
    c  offsets committed at this step  t  their token ids                    p  their confidences (3 decimals)
    m  [offset, best guess, confidence] of every position masked before the step (the heatmap's row)
    x  prompt offsets inside the block (only when there are some)           f  1 when the block is complete
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from sdar_core.trace import StepEvent

CONFIDENCE_DIGITS = 3


def compact(e: StepEvent) -> dict:
    """One step as the page reads it (see the module docstring)."""
    r = CONFIDENCE_DIGITS
    step = {
        "b": e.block,
        "s": e.step,
        "at": e.block_start,
        "c": list(e.committed),
        "t": [e.block_state[off] for off in e.committed],
        "p": [round(float(c), r) for c in e.committed_confidence],
        "m": [
            [off, e.candidates.get(off), round(float(conf), r)]
            for off, conf in sorted(e.masked_confidence.items())
        ],
        "f": int(e.final),
    }
    if e.prompt_positions:
        step["x"] = list(e.prompt_positions)
    return step


@dataclass
class Feed:
    """The growing value of one player: `value()` is a fresh dict each call (Gradio diffs it against the last one
    it sent). `log` is the one home of its steps and pieces (`expand(value())` reads them back); `sent` only
    remembers which token ids have their text in it already."""

    run: int  # a new number for every decode: the page starts over when it changes
    title: str
    block_length: int
    ar: bool  # one token per forward: no blocks, no masks to show
    pace_ms: float  # the watch replay's delay per frame (0: show the newest step as it arrives)
    stop_ids: list[int] = field(default_factory=list)
    status: str = "decoding"  # decoding | done | stopped | failed
    answer_end: int | None = None  # absolute position after the kept answer, once known
    note: str = ""
    log: str = ""  # what the page receives: the pieces and the steps, a line of JSON each
    sent: set[str] = field(default_factory=set, repr=False)  # token ids (as JSON keys) whose text is in `log`

    def push(self, events: Iterable[StepEvent], pieces: dict[int, str]) -> None:
        """Add a row's steps and the text of every token they show (each token's text is sent once)."""
        new = {str(tok): text for tok, text in pieces.items() if str(tok) not in self.sent}
        steps = [compact(e) for e in events]
        self.sent.update(new)
        lines = ([{"pieces": new}] if new else []) + steps
        self.log += "".join(json.dumps(x, separators=(",", ":"), ensure_ascii=False) + "\n" for x in lines)

    def finish(self, status: str, answer_end: int | None = None, note: str = "") -> None:
        self.status, self.answer_end, self.note = status, answer_end, note

    def value(self) -> dict:
        return {
            "run": self.run,
            "title": self.title,
            "L": self.block_length,
            "ar": self.ar,
            "pace": self.pace_ms,
            "stop": list(self.stop_ids),
            "log": self.log,
            "status": self.status,
            "end": self.answer_end,
            "note": self.note,
        }


def empty(message: str, run: int = 0) -> dict:
    """A player's value with nothing to show but `message`."""
    return {
        "run": run,
        "title": "",
        "L": 0,
        "ar": False,
        "pace": 0,
        "stop": [],
        "log": "",
        "status": "empty",
        "end": None,
        "note": message,
    }


def expand(value: dict) -> dict:
    """A player's value with its log read back: `steps` (the compact steps, in order) and `pieces` (token id as a
    string -> text) in place of `log`."""
    steps, pieces = [], {}
    for line in value.get("log", "").splitlines():
        item = json.loads(line)
        if "pieces" in item:
            pieces.update(item["pieces"])
        else:
            steps.append(item)
    out = {k: v for k, v in value.items() if k != "log"}
    return {**out, "steps": steps, "pieces": pieces}
