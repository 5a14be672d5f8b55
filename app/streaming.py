"""The one way the studio runs a decode it shows: `generate` in a worker thread, its StepEvents back through
a queue to the (generator) event handler, frames built there and yielded at most every FRAME_INTERVAL
seconds, then each lane's result. The decode holds the device (DEVICE) only while it computes; a paced display
is a replay of the recording after the decode (replay.py), never a slowed-down decode.

Chat and the visualizer stream one lane; the race streams two or three, one after the other or together.
`sdar_core.generate` calls on_step synchronously and propagates its exceptions, so raising `Stopped` from
on_step ends the decode at its next step without touching the decoder; any other exception of the decode
(a GenerationError for a prompt that does not fit, ...) is raised again in the handler's thread.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator

import torch

from sdar_core import DecodeParams, generate
from sdar_core.trace import Generation, StepEvent

from .registry import LoadedModel
from .render import Frame, FrameBuilder, kept_answer_end

FRAME_INTERVAL = 1 / 20  # seconds between two streamed frames


class Stopped(Exception):
    """Raised inside on_step when the user pressed Stop."""


@dataclass
class Lane:
    """One decode the studio shows (a model, its prompt ids, its settings) and what it has shown so far."""

    loaded: LoadedModel
    ids: list[int]  # the prompt, one row
    settings: DecodeParams
    state: str = "waiting"  # waiting | running | done | stopped
    events: list[StepEvent] = field(default_factory=list)
    pieces: dict[int, str] = field(default_factory=dict)  # token id -> printed text, for every token shown
    builder: FrameBuilder | None = None  # built with the model's stop tokens
    frame: Frame | None = None  # after the last step; finished in place when the lane ends
    gen: Generation | None = None  # None until done, and for a stopped lane
    answer_end: int | None = None  # absolute position after the kept answer, once done
    started: float | None = None  # perf_counter of its first step

    def __post_init__(self) -> None:
        if self.builder is None:
            self.builder = FrameBuilder(stop_ids=self.loaded.stop_token_ids)

    def push(self, e: StepEvent) -> None:
        if self.started is None:
            self.started = time.perf_counter()
        self.events.append(e)
        self.pieces.update(self.loaded.event_pieces(e))
        self.frame = self.builder.push(e)

    def finish(self, gen: Generation | None) -> None:
        """The lane's result (None: stopped); the last frame strikes out what follows the stop token."""
        self.gen, self.state = gen, "stopped" if gen is None else "done"
        self.answer_end = kept_answer_end(self.events, gen.lengths[0] if gen else None)
        self.frame = self.builder.finish(self.answer_end)


def decode(lane: Lane, on_step=None) -> Generation:
    """The lane's generation: one row, the model's stop tokens. Its events reach on_step; none is kept
    twice (the lane keeps them), so every lane costs the decoder the same recording work."""
    return generate(lane.loaded.model, [lane.ids], lane.settings, stop_token_ids=lane.loaded.stop_token_ids,
                    trace=False, on_step=on_step)


DEVICE = threading.Lock()  # one model, one device: one decode at a time, held by the decode alone
BUSY_WAIT = 300.0  # seconds a request waits for the device before it is told to try again


class Busy(RuntimeError):
    """The device stayed taken by other visitors' decodes for longer than BUSY_WAIT."""


def take_device(stop: threading.Event, wait: float | None = None) -> bool:
    """Acquire DEVICE (False when `stop` is set first); Busy after `wait` seconds (BUSY_WAIT by default)."""
    deadline = time.monotonic() + (BUSY_WAIT if wait is None else wait)
    while not DEVICE.acquire(timeout=0.1):
        if stop.is_set():
            return False
        if time.monotonic() > deadline:
            raise Busy("the studio is busy with other visitors' requests: try again in a minute")
    return True


@dataclass
class _Update:
    lane: str | None
    kind: str  # "start" | "step" (payload: StepEvent) | "done" (payload: Generation | None when stopped)
    payload: object = None  # | "error" (payload: the exception) | "exit" (a worker thread ended: lane None)


def warm_up(lane: Lane, stop: threading.Event) -> None:
    """Run the lane's decode, untimed and unshown, until its second block: whatever its first run pays once (CUDA
    graph capture and kernel compilation for its shapes on a GPU, first-call allocations anywhere) is paid here,
    so that the timed runs that follow all start warm."""
    def until_second_block(event: StepEvent) -> None:
        if event.block >= 1:
            raise Stopped()

    if not take_device(stop):
        return
    try:
        with torch.inference_mode():
            decode(lane, until_second_block)
    except Stopped:
        pass
    finally:
        DEVICE.release()


def decode_alone(lane: Lane, stop: threading.Event) -> Generation | None:
    """decode(lane) holding DEVICE, not streamed (the sweep); None when `stop` was set while waiting for it."""
    if not take_device(stop):
        return None
    try:
        with torch.inference_mode():
            return decode(lane)
    finally:
        DEVICE.release()


class _Release:
    """Releases DEVICE when the last of `n` worker threads is done with it."""

    def __init__(self, n: int) -> None:
        self.left, self._lock = n, threading.Lock()

    def one_done(self) -> None:
        with self._lock:
            self.left -= 1
            if self.left == 0:
                DEVICE.release()


def _worker(names: list[str], lanes: dict[str, Lane], out: queue.Queue, stop: threading.Event,
            release: _Release) -> None:
    """Decode `names` one after the other at full speed (the handler shows the steps at its own pace)."""
    def on_step(event: StepEvent) -> None:
        if stop.is_set():
            raise Stopped()
        out.put(_Update(name, "step", event))

    try:
        for name in names:
            if stop.is_set():
                break
            out.put(_Update(name, "start"))
            try:
                with torch.inference_mode():
                    out.put(_Update(name, "done", decode(lanes[name], on_step)))
            except Stopped:
                out.put(_Update(name, "done", None))
            except BaseException as e:  # handed to the handler's thread, which raises it there
                out.put(_Update(name, "error", e))
                break
    finally:
        release.one_done()
        out.put(_Update(None, "exit"))


def _start(lanes: dict[str, Lane], out: queue.Queue, stop: threading.Event, parallel: bool) -> int:
    """Start the worker threads (the caller holds DEVICE; the last thread to end releases it); their count."""
    groups = [[name] for name in lanes] if parallel else [list(lanes)]
    release = _Release(len(groups))
    for names in groups:
        threading.Thread(target=_worker, args=(names, lanes, out, stop, release), daemon=True,
                         name=f"sdar-{'-'.join(names)}").start()
    return len(groups)


def stream(lanes: dict[str, Lane], stop: threading.Event, *, parallel: bool = False) -> Iterator[dict[str, Lane]]:
    """Decode every lane and yield `lanes` whenever there is something new to show: a step (throttled to
    FRAME_INTERVAL), a lane's end.

    parallel=False runs the lanes one after the other (honest timings: they do not share the device);
    parallel=True starts them together. The decodes hold DEVICE and run at full speed; the frames are shown
    from the queue, so a slow display never keeps another visitor off the device.
    Once `stop` is set no lane starts and the frames still queued are skipped; leaving the loop before every
    worker ended sets it, so any worker still running ends at its next step.
    """
    out: queue.Queue[_Update] = queue.Queue()
    if not take_device(stop):
        return
    running, shown, held = _start(lanes, out, stop, parallel), -math.inf, False  # the first step is always due
    try:
        while running:
            try:
                u = out.get(timeout=max(0.0, shown + FRAME_INTERVAL - time.perf_counter()) if held else None)
            except queue.Empty:  # a frame the throttle held back, and nothing new since: show it now
                held, shown = False, time.perf_counter()
                yield lanes
                continue
            if u.kind in ("exit", "start"):
                running -= u.kind == "exit"
                if u.kind == "start":
                    lanes[u.lane].state = "running"
                continue
            if u.kind == "error":
                raise u.payload
            if u.kind == "done":
                lanes[u.lane].finish(u.payload)
            else:
                lanes[u.lane].push(u.payload)
                # Frames follow wall time, not the decode (which may run hundreds of steps a second on a GPU):
                # rendering shares the interpreter with the decoding thread, so every extra frame slows it.
                due = time.perf_counter() - shown >= FRAME_INTERVAL
                held = not due and not stop.is_set()
                if not due or stop.is_set():
                    continue
            held, shown = False, time.perf_counter()
            yield lanes
    finally:
        if running:  # left early: the workers still decoding end at their next step
            stop.set()


class StopFlags:
    """One stop flag per browser session (gr.Request.session_hash): Stop reaches the running decode. The newest
    `capacity` sessions keep theirs (a flag matters only while that session's decode runs)."""

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._flags: OrderedDict[str, threading.Event] = OrderedDict()
        self._lock = threading.Lock()

    def arm(self, session: str | None) -> threading.Event:
        """A fresh flag for `session` (a private one when there is no session)."""
        if not session:
            return threading.Event()
        with self._lock:
            self._flags.pop(session, None)
            flag = self._flags[session] = threading.Event()
            while len(self._flags) > self.capacity:
                self._flags.popitem(last=False)
            return flag

    def trigger(self, session: str | None) -> bool:
        with self._lock:
            flag = self._flags.get(session) if session else None
        if flag is None:
            return False
        flag.set()
        return True
