"""Stream a generation into Gradio: `generate` runs in a worker thread and its on_step events come back
through a queue to the (generator) event handler; Stop is a threading.Event checked at every step.

`sdar_core.generate` calls on_step synchronously and propagates its exceptions, so raising `Stopped`
from on_step aborts the decode at the next step without touching the decoder.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import torch


class Stopped(Exception):
    """Raised inside on_step when the user pressed Stop."""


@dataclass
class Update:
    lane: str
    kind: str  # "step" (payload: StepEvent) | "done" (payload: Generation) | "stopped" | "error" (payload: exc)
    payload: object = None


class StopFlags:
    """One stop flag per browser session (gr.Request.session_hash): Stop reaches the running decode."""

    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def arm(self, session: str) -> threading.Event:
        with self._lock:
            flag = self._flags[session] = threading.Event()
            return flag

    def trigger(self, session: str) -> bool:
        with self._lock:
            flag = self._flags.get(session)
        if flag is None:
            return False
        flag.set()
        return True


def _worker(lane: str, run: Callable, out: queue.Queue, stop: threading.Event) -> None:
    def on_step(event) -> None:
        if stop.is_set():
            raise Stopped()
        out.put(Update(lane, "step", event))

    try:
        with torch.inference_mode():
            gen = run(on_step)
        out.put(Update(lane, "done", gen))
    except Stopped:
        out.put(Update(lane, "stopped"))
    except BaseException as e:  # handed to the handler thread, which turns it into a message
        out.put(Update(lane, "error", e))


def stream_lanes(jobs: dict[str, Callable], stop: threading.Event, *, parallel: bool = False) -> Iterator[Update]:
    """Run each job `run(on_step) -> Generation` and yield its Updates as they happen.

    parallel=False runs the jobs one after the other (honest timings: they do not share the device);
    parallel=True starts them together (a live race; each one's timing includes the other's load).
    Exceptions of a job come back as an "error" Update; leaving the loop early stops the workers.
    """
    out: queue.Queue[Update] = queue.Queue()
    pending = list(jobs.items())
    running = 0

    def start(lane, run):
        threading.Thread(target=_worker, args=(lane, run, out, stop), daemon=True, name=f"sdar-{lane}").start()

    try:
        if parallel:
            for lane, run in pending:
                start(lane, run)
            running, pending = len(pending), []
        while running or pending:
            if not running:
                start(*pending.pop(0))
                running = 1
            update = out.get()
            if update.kind != "step":
                running -= 1
            yield update
    finally:
        stop.set()  # the consumer went away (or is done): any worker still running ends at its next step


def stream_one(run: Callable, stop: threading.Event) -> Iterator[Update]:
    return stream_lanes({"main": run}, stop)
