"""What a session keeps of its last generation (in gr.State): the row's step events, the stats, the text
of every token that appears, its last frame, and the trace files for download. Plain data, no model, no
tokenizer."""

from __future__ import annotations

import atexit
import csv
import io
import itertools
import json
import os
import shutil
import signal
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
    made first), created on first use and removed at exit, on SIGTERM too; the oldest files go once there are more
    than max_files or max_bytes (the files just written always stay, for their download).

    Gradio serves the files from here (the folder is one of its static paths): it makes no copy in its own temp
    folder, where any local user could read it and nothing would prune it, so these bounds cover every copy. A
    file's name carries 128 random bits: knowing the folder (from one's own download link) reveals no one else's."""

    max_files: int = MAX_TRACE_FILES
    max_bytes: int = MAX_TRACE_BYTES
    path: Path | None = None
    _count: itertools.count = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, texts: dict[str, str]) -> list[str]:
        """Write one file per suffix -> text under a new stem; their paths, in order."""
        with self._lock:
            if self.path is None:
                self.path = Path(tempfile.mkdtemp(prefix="sdar-studio-traces-")).resolve()
                atexit.register(shutil.rmtree, self.path, ignore_errors=True)
                import gradio as gr

                gr.set_static_paths([self.path])  # served in place, never copied to gradio's temp folder
            stem = self.path / f"{next(self._count):08d}-sdar-trace-{uuid.uuid4().hex}"
            paths = [Path(f"{stem}.{suffix}") for suffix in texts]
            for path, text in zip(paths, texts.values()):
                path.write_text(text)
            self._prune(keep=set(paths))
        return [str(p) for p in paths]

    def remove(self) -> None:
        """Delete the folder and every file in it (the next write makes a new one)."""
        path, self.path = self.path, None
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

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


def remove_on_sigterm(folder: TraceFolder) -> bool:
    """Remove `folder` when the process gets SIGTERM (as `kill`, systemd, docker stop and Spaces send), then do what
    the previous handler did: call it, ignore the signal, or die of it as by default. Python runs no atexit hook
    for a signal, so without this the private folder outlives the process. Only the main thread may install
    a signal handler: False elsewhere (nothing installed)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):
        folder.remove()
        if callable(previous):
            previous(signum, frame)
        elif (
            previous != signal.SIG_IGN
        ):  # SIG_DFL (or unknown, set outside Python): terminate as it would have
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, handler)
    return True


TRACES = TraceFolder()
remove_on_sigterm(TRACES)  # the studio imports this module in its main thread


@dataclass
class Recording:
    label: str  # e.g. the prompt, shortened
    events: list[StepEvent]
    stats: Stats | None  # None when the run was stopped
    pieces: dict[int, str]
    answer_end: int | None  # absolute position after the kept answer (None: unknown, stopped)
    feed: dict | None = (
        None  # what the page's player drew for it (app/feed.py), shown again by the visualizer
    )
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


def record(label: str, run: Run) -> Recording:
    """A Recording of a finished run, with its trace written as JSON and CSV files (for gr.File downloads).
    The run's events are the streamed steps: the decode kept no trace of its own."""
    stats, events = run.stats, run.events
    trace = Generation(tokens=None, lengths=[], stats=stats, trace=events)
    json_path, csv_path = TRACES.write(with_text(trace, run.pieces, stopped=stats is None))
    return Recording(
        label=label,
        events=events,
        stats=stats,
        pieces=run.pieces,
        answer_end=run.feed.answer_end,
        feed=run.feed.value(),
        json_path=json_path,
        csv_path=csv_path,
    )
