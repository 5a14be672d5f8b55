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

import itertools
import math
import queue
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch

from sdar_core import generate
from sdar_core.runner import default_mode
from sdar_core.trace import Generation, StepEvent

from .registry import LoadedModel
from .render import Frame, FrameBuilder, kept_answer_end
from .settings import DecodeSettings

FRAME_INTERVAL = 1 / 20  # seconds between two streamed frames


class Stopped(Exception):
    """Raised inside on_step when the user pressed Stop."""


@dataclass
class Lane:
    """One decode the studio shows (a model, its prompt ids, its settings) and what it has shown so far."""

    loaded: LoadedModel
    ids: list[int]  # the prompt, one row
    settings: DecodeSettings
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


def decode(lane: Lane, on_step=None, turn=None, stop: threading.Event | None = None) -> Generation:
    """The lane's generation: one row, the model's stop tokens. Its events reach on_step; none is kept
    twice (the lane keeps them), so every lane costs the decoder the same recording work.

    With the `turn` it holds (a scheduler's: `make_way`), the lane gives the device to a fresher visitor's request
    at a block boundary and takes it back after, where that is safe: a plain runner, whose cache is the decode's own
    (on a GPU the static runners are pooled per shape, so a lane gives way between runs only). The time it waited is
    not the lane's: its stats leave it out."""
    paused = 0.0
    if turn is not None and hasattr(turn, "make_way") and default_mode(lane.loaded.model) == "plain":

        def giving_way(event: StepEvent) -> None:
            nonlocal paused
            if on_step is not None:
                on_step(event)
            if event.final:
                paused += turn.make_way(stop)
                if stop is not None and stop.is_set():
                    raise Stopped()

        step = giving_way
    else:
        step = on_step
    gen = generate(
        lane.loaded.model,
        [lane.ids],
        stop_token_ids=lane.loaded.stop_token_ids,
        trace=False,
        on_step=step,
        **lane.settings.generate_kwargs(),
    )
    if paused:
        gen.stats = replace(gen.stats, seconds=gen.stats.seconds - paused)
    return gen


DEVICE = threading.Lock()  # one model, one device: one decode at a time, held by the decode alone
BUSY_WAIT = 300.0  # seconds a request waits for the device before it is told to try again
BUSY_MESSAGE = "the studio is busy with other visitors' requests: try again in a minute"


class Busy(RuntimeError):
    """The device stayed taken by other visitors' decodes for longer than BUSY_WAIT."""


def take_device(stop: threading.Event, wait: float | None = None) -> bool:
    """Acquire DEVICE (False when `stop` is set first); Busy after `wait` seconds (BUSY_WAIT by default)."""
    deadline = time.monotonic() + (BUSY_WAIT if wait is None else wait)
    while not DEVICE.acquire(timeout=0.1):
        if stop.is_set():
            return False
        if time.monotonic() > deadline:
            raise Busy(BUSY_MESSAGE)
    return True


class LockTurn:
    """The device taken through its lock directly (tools and tests; the studio's race and sweep queue for their
    turns on the device's scheduler instead: scheduler.SchedulerTurn, the same two methods)."""

    def take(self, stop: threading.Event) -> bool:
        return take_device(stop)

    def give_back(self) -> None:
        DEVICE.release()


def on_budget(on_step, budget):
    """on_step that first spends one forward of `budget` (app.budget.Budget) and ends the decode once it is spent."""
    if budget is None:
        return on_step

    def spending(event: StepEvent) -> None:
        if not budget.spend(1):
            raise Stopped()
        if on_step is not None:
            on_step(event)

    return spending


@dataclass
class _Update:
    lane: str | None
    kind: str  # "start" | "step" (payload: StepEvent) | "done" (payload: Generation | None when stopped)
    payload: object = None  # | "error" (payload: the exception) | "exit" (a worker thread ended: lane None)


def warm_up(lane: Lane, stop: threading.Event, turn=None, budget=None) -> None:
    """Run the lane's decode, untimed and unshown, until its second block: whatever its first run pays once (CUDA
    graph capture and kernel compilation for its shapes on a GPU, first-call allocations anywhere) is paid here,
    so that the timed runs that follow all start warm."""

    def until_second_block(event: StepEvent) -> None:
        if event.block >= 1:
            raise Stopped()

    turn = turn or LockTurn()
    if not turn.take(stop):
        return
    try:
        with torch.inference_mode():
            decode(lane, on_budget(until_second_block, budget), turn, stop)
    except Stopped:
        pass
    finally:
        turn.give_back()


def decode_alone(lane: Lane, stop: threading.Event, turn=None, budget=None) -> Generation | None:
    """decode(lane) on the device's turn, not streamed (the sweep); None when `stop` was set while waiting for it,
    or when `budget` ran out during it."""
    turn = turn or LockTurn()
    if not turn.take(stop):
        return None
    try:
        with torch.inference_mode():
            return decode(lane, on_budget(None, budget), turn, stop)
    except Stopped:
        return None
    finally:
        turn.give_back()


class _Release:
    """Gives the device's turn back when the last of `n` worker threads is done with it."""

    def __init__(self, n: int, turn) -> None:
        self.left, self.turn, self._lock = n, turn, threading.Lock()

    def one_done(self) -> None:
        with self._lock:
            self.left -= 1
            if self.left == 0:
                self.turn.give_back()


def _worker(
    names: list[str],
    lanes: dict[str, Lane],
    out: queue.Queue,
    stop: threading.Event,
    release: _Release,
    budget=None,
) -> None:
    """Decode `names` one after the other at full speed (the handler shows the steps at its own pace)."""

    def shown(event: StepEvent) -> None:
        if stop.is_set():
            raise Stopped()
        out.put(_Update(name, "step", event))

    on_step = on_budget(shown, budget)

    try:
        for name in names:
            if stop.is_set():
                break
            out.put(_Update(name, "start"))
            try:
                with torch.inference_mode():
                    # alone on the turn, a lane may give way at block boundaries; sharing it, never
                    alone = release.turn if release.left == 1 else None
                    out.put(_Update(name, "done", decode(lanes[name], on_step, alone, stop)))
            except Stopped:
                out.put(_Update(name, "done", None))
            except BaseException as e:  # handed to the handler's thread, which raises it there
                out.put(_Update(name, "error", e))
                break
    finally:
        release.one_done()
        out.put(_Update(None, "exit"))


def _start(
    lanes: dict[str, Lane], out: queue.Queue, stop: threading.Event, parallel: bool, turn, budget
) -> int:
    """Start the worker threads (the caller has the device's turn; the last thread to end gives it back); their
    count."""
    groups = [[name] for name in lanes] if parallel else [list(lanes)]
    release = _Release(len(groups), turn)
    for names in groups:
        threading.Thread(
            target=_worker,
            args=(names, lanes, out, stop, release, budget),
            daemon=True,
            name=f"sdar-{'-'.join(names)}",
        ).start()
    return len(groups)


def stream(
    lanes: dict[str, Lane], stop: threading.Event, *, parallel: bool = False, turn=None, budget=None
) -> Iterator[dict[str, Lane]]:
    """Decode every lane and yield `lanes` whenever there is something new to show: a step (throttled to
    FRAME_INTERVAL), a lane's end.

    parallel=False runs the lanes one after the other (honest timings: they do not share the device);
    parallel=True starts them together. The decodes hold DEVICE and run at full speed; the frames are shown
    from the queue, so a slow display never keeps another visitor off the device.
    Once `stop` is set no lane starts and the frames still queued are skipped; leaving the loop before every
    worker ended sets it, so any worker still running ends at its next step. `turn` takes the device (LockTurn by
    default); `budget` (app.budget.Budget) is spent one forward per step, and a lane still running when it is
    spent ends as stopped.
    """
    out: queue.Queue[_Update] = queue.Queue()
    turn = turn or LockTurn()
    if not turn.take(stop):
        return
    running, shown, held = (
        _start(lanes, out, stop, parallel, turn, budget),
        -math.inf,
        False,
    )  # first step is due
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


class StopFlag(threading.Event):
    """The stop flag of one run (a decode, a race, a sweep, a Load's wait): `run` names it, `session` is the
    browser session whose Stop reaches it, `visitor` whose device time the run counts as (exposure.visitor_of)."""

    def __init__(self, run: int, session: str | None, visitor: str = "") -> None:
        super().__init__()
        self.run, self.session, self.visitor = run, session, visitor


class StopFlags:
    """The stop flags of the runs in flight, by browser session (gr.Request.session_hash): Stop sets every flag of
    its session. Each run gets a flag of its own (a run id), so arming another run of the same session (a Load
    while a race runs) never replaces it; the table holds its flags weakly, so a flag lives exactly as long as its
    run holds it, and no other session's traffic can push it out."""

    def __init__(self) -> None:
        self._flags: weakref.WeakValueDictionary[int, StopFlag] = weakref.WeakValueDictionary()
        self._runs = itertools.count(1)
        self._lock = threading.Lock()

    def arm(self, session: str | None, visitor: str = "") -> StopFlag:
        """A fresh flag for a new run of `session` (a private one, reached by no Stop, when there is no session)."""
        flag = StopFlag(next(self._runs), session or None, visitor)
        if flag.session:
            with self._lock:
                self._flags[flag.run] = flag
        return flag

    def trigger(self, session: str | None) -> bool:
        """Set the flags of every run of `session` in flight; whether there was one."""
        if not session:
            return False
        with self._lock:
            flags = [f for f in self._flags.values() if f.session == session]
        for flag in flags:
            flag.set()
        return bool(flags)

    def __len__(self) -> int:
        """Runs in flight that a Stop can reach."""
        return len(self._flags)
