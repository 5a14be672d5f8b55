"""What a session keeps of its last generation (in gr.State): the row's step events, the stats, the text
of every token that appears, its last frame, and the trace files for download. Plain data, no model, no
tokenizer."""
from __future__ import annotations

import atexit
import itertools
import json
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from sdar_core.trace import Generation, Stats, StepEvent

from .render import Frame

if TYPE_CHECKING:
    from .streaming import Lane

MAX_TRACE_FILES = 200  # the newest trace files kept for download (a JSON and a CSV per generation)
MAX_TRACE_BYTES = 64 * 2**20


@dataclass
class TraceFolder:
    """This process's trace files: a private folder (mkdtemp: owner-only, a fresh name, never one another user
    made first), created on first use and removed at exit; the oldest files go once there are more than
    max_files or max_bytes (the files just written always stay, for their download)."""

    max_files: int = MAX_TRACE_FILES
    max_bytes: int = MAX_TRACE_BYTES
    path: Path | None = None
    _count: itertools.count = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, texts: dict[str, str]) -> list[str]:
        """Write one file per suffix -> text under a new stem; their paths, in order."""
        with self._lock:
            if self.path is None:
                self.path = Path(tempfile.mkdtemp(prefix="sdar-studio-traces-"))
                atexit.register(shutil.rmtree, self.path, ignore_errors=True)
            stem = self.path / f"{next(self._count):08d}-sdar-trace-{uuid.uuid4().hex[:8]}"
            paths = [Path(f"{stem}.{suffix}") for suffix in texts]
            for path, text in zip(paths, texts.values()):
                path.write_text(text)
            self._prune(keep=set(paths))
        return [str(p) for p in paths]

    def _prune(self, keep: set[Path]) -> None:
        files = sorted(self.path.iterdir())  # oldest first: the names start with a counter
        sizes = {f: f.stat().st_size for f in files}
        total = sum(sizes.values())
        for f in files:
            if len(sizes) <= self.max_files and total <= self.max_bytes:
                break
            if f in keep:
                continue
            f.unlink(missing_ok=True)
            total -= sizes.pop(f)


TRACES = TraceFolder()


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
    if gen is not None:
        text_json = trace.trace_json()
    else:  # stopped: no stats, the steps that happened
        text_json = json.dumps({"stats": None, "stopped": True, "steps": [e.to_dict() for e in events]}, indent=1)
    json_path, csv_path = TRACES.write({"json": text_json, "csv": trace.trace_csv()})
    return Recording(label=label, events=events, stats=gen.stats if gen else None, pieces=lane.pieces,
                     answer_end=lane.answer_end, last_frame=lane.frame, json_path=json_path, csv_path=csv_path)
