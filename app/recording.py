"""What a session keeps of its last generation (in gr.State): the row's step events, the stats, the text
of every token that appears, its last frame, and the trace files for download. Plain data, no model, no
tokenizer."""
from __future__ import annotations

import json
import tempfile
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sdar_core.trace import Generation, Stats, StepEvent

from .render import Frame

if TYPE_CHECKING:
    from .streaming import Lane

TRACE_DIR = Path(tempfile.gettempdir()) / "sdar-studio-traces"


@dataclass
class Recording:
    label: str  # e.g. the prompt, shortened
    events: list[StepEvent]
    stats: Stats | None  # None when the run was stopped
    pieces: dict[int, str]
    answer_end: int | None  # absolute position after the kept answer (None: unknown, stopped)
    last_frame: Frame | None = None  # the frame after the last step, as the lane finished it
    json_path: str | None = None
    csv_path: str | None = None

    @property
    def n_steps(self) -> int:
        return len(self.events)


def record(label: str, lane: Lane) -> Recording:
    """A Recording of a finished lane, with its trace written as JSON and CSV files (for gr.File downloads).
    The lane's events are the streamed steps: the decode kept no trace of its own."""
    gen, events = lane.gen, lane.events
    trace = Generation(tokens=None, lengths=[], stats=None, trace=events) if gen is None else replace(gen, trace=events)
    TRACE_DIR.mkdir(parents=True, exist_ok=True)
    stem = TRACE_DIR / f"sdar-trace-{uuid.uuid4().hex[:8]}"
    if gen is not None:
        text_json = trace.trace_json()
    else:  # stopped: no stats, the steps that happened
        text_json = json.dumps({"stats": None, "stopped": True, "steps": [e.to_dict() for e in events]}, indent=1)
    Path(f"{stem}.json").write_text(text_json)
    Path(f"{stem}.csv").write_text(trace.trace_csv())
    return Recording(label=label, events=events, stats=gen.stats if gen else None, pieces=lane.pieces,
                     answer_end=lane.answer_end, last_frame=lane.frame, json_path=f"{stem}.json",
                     csv_path=f"{stem}.csv")
