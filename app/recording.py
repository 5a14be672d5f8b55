"""What a session keeps of its last generation (in gr.State): the row's step events, the stats, the text
of every token that appears, its last frame, and the trace files for download. Plain data, no model, no
tokenizer."""
from __future__ import annotations

import atexit
import csv
import io
import itertools
import json
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sdar_core.trace import Generation, Stats, StepEvent

if TYPE_CHECKING:
    from .run import Run

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
    feed: dict | None = None  # what the page's player drew for it (app/feed.py), shown again by the visualizer
    json_path: str | None = None
    csv_path: str | None = None

    @property
    def n_steps(self) -> int:
        return len(self.events)


def with_text(trace: Generation, pieces: dict[int, str], stopped: bool) -> dict[str, str]:
    """The trace as JSON and CSV with each token's printed text beside its id: every step's `block_text`,
    `committed_text` and `candidate_text`; the CSV's `candidate_text` column and its `global_step` (from 1, as
    the studio counts steps)."""
    steps = []
    for e in trace.trace:
        d = e.to_dict()
        d["block_text"] = [pieces.get(t, "") for t in e.block_state]
        d["committed_text"] = [pieces.get(e.block_state[off], "") for off in e.committed]
        d["candidate_text"] = {str(off): pieces.get(t, "") for off, t in e.candidates.items()}
        steps.append(d)
    head = {"stats": None, "stopped": True} if stopped else {"stats": trace.stats.to_dict()}
    rows = list(csv.reader(io.StringIO(trace.trace_csv())))
    step_of = {}  # (block, step) -> global step from 1, in trace order
    for i, e in enumerate(trace.trace):
        step_of[(e.block, e.step)] = i + 1
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(rows[0] + ["candidate_text", "global_step"])
    for r in rows[1:]:  # row, block, step, block_start, offset, position, candidate, confidence, committed
        candidate = pieces.get(int(r[6]), "") if r[6] else ""
        writer.writerow(r + [candidate, step_of[(int(r[1]), int(r[2]))]])
    return {"json": json.dumps({**head, "steps": steps}, indent=1), "csv": out.getvalue()}


def record(label: str, run: "Run") -> Recording:
    """A Recording of a finished run, with its trace written as JSON and CSV files (for gr.File downloads).
    The run's events are the streamed steps: the decode kept no trace of its own."""
    stats, events = run.stats, run.events
    trace = Generation(tokens=None, lengths=[], stats=stats, trace=events)
    json_path, csv_path = TRACES.write(with_text(trace, run.pieces, stopped=stats is None))
    return Recording(label=label, events=events, stats=stats, pieces=run.pieces, answer_end=run.feed.answer_end,
                     feed=run.feed.value(), json_path=json_path, csv_path=csv_path)
