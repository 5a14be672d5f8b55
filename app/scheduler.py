"""One decode scheduler per device: visitors share the GPU by batching.

A handler submits a `Job` (a model, one prompt, its DecodeParams, a stop flag) and reads typed updates from it:
`Started`, then `Steps` (a block's step events of its row, as the decoder reports them), then `Finished` (its
answer and stats) or `Failed`. The scheduler's thread repeats one step, the way nano-vllm's engine does:

    with device:              # the device is free (another batch or a race lane may have held it)
        batch = self.schedule()   # the oldest waiting job, and every waiting job that can share its decode
        self.run(batch)           # one `generate` over the batch's rows
                                  # (postprocessing is per row, inside run: each job ends as soon as its row does)

Jobs share a decode when they have the same model and the same decoding settings (block length, steps,
strategy, threshold, greedy sampling; max_new_tokens may differ: each row ends at its own limit). A sampled
request (temperature > 0) decodes alone: one generator for the batch would make its answer depend on its
neighbours, and batching must never change an answer. A job that arrives while a batch decodes joins it at its next
block boundary when the batch has a free row (one it was padded with, or one whose answer has ended) and the job's
prompt and answer fit the batch's buffer (sdar_core.decoding.Joining): it waits for a block, not for the batch. The
batch admits waiting jobs in turn order and stops at the first one that cannot join (another setting, a race's
lease, a prompt too long for the batch's layout), so the batch ends and that turn comes: joining never lets a
batch run on past a visitor who is due. A job that arrives while the device is busy otherwise (no free row, a race
lane) joins the next batch. Visitors who press Send together reach the server a few milliseconds apart (each
request is its own HTTP call): when a job finds the device idle, the scheduler waits until no new job has come for
GATHER_QUIET seconds (at most GATHER_MAX from the oldest waiting job) before it takes the batch, so that a crowd shares
its first decode instead of the first arrival decoding alone and the rest waiting for it. A lone visitor pays
GATHER_QUIET once; jobs that waited for a busy device pay nothing (they are past the window).
Visitors take turns by the device time they used, not by arrival: the next batch starts with the waiting job of
the visitor with the least recent device-seconds (decayed with a half-life of USAGE_HALF_LIFE seconds), so a visitor
who has been decoding for minutes waits behind a fresh one, whatever the order they came in. A race or a sweep
borrows the device through the same queue (`Lease`, one lane's run at a time, each a turn like a batch) and gives it
back early, at a block boundary, when a fresher visitor is waiting (`SchedulerTurn.make_way`).
On a GPU the batch is padded to a power of two (copies of its first row, whose steps nobody reads), so the
captured CUDA graphs stay few. The scheduler takes the device lock (streaming.DEVICE) per batch: the race's
timed lanes and the GPU warm-up, which take the same lock, keep the device to themselves while they run.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from sdar_core import DecodeParams, GenerationError, generate
from sdar_core.decoding import Arrival, Room, check_fits
from sdar_core.runner import default_mode
from sdar_core.trace import Stats, StepEvent

from .registry import LoadedModel
from .streaming import BUSY_MESSAGE, BUSY_WAIT, DEVICE, Busy

log = logging.getLogger(__name__)
MAX_BATCH = 16  # rows of one decode: beyond it, requests wait for the next batch
TURNS_KEPT = 256
USAGE_HALF_LIFE = 120.0  # seconds: a visitor's device time counts half as much this long after it was used
MAX_NESTED = 2  # turns that may run inside a paused batch, one inside the other
TURN_QUANTUM = (
    0.25  # seconds of device time a timed decode keeps before it gives way (no hand-off every token)
)
GATHER_QUIET = 0.015  # seconds without a new arrival before an idle device takes its batch
GATHER_MAX = 0.05  # seconds from the oldest waiting job after which the batch is taken, arrivals or not
USAGE_KEPT = 4096  # visitors whose device time is remembered (beyond: those with the least are forgotten)
JOIN_ENV = "SDAR_JOIN"  # 0: a job that arrives while a batch decodes waits for the next batch
WIDTH_ENV = "SDAR_BATCH_WIDTH"  # rows a batch holds at least: free ones are seats for jobs that join it
WIDTH = 1


def batching_from_env(env=os.environ) -> tuple[bool, int]:
    """(join, width) for the studio's schedulers from SDAR_JOIN and SDAR_BATCH_WIDTH; ValueError naming the
    variable when a value is not one they take."""
    join = env.get(JOIN_ENV, "1").strip().lower()
    if join not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        raise ValueError(f"{JOIN_ENV}={join!r}: give 1 (rows join a running batch, the default) or 0")
    raw = env.get(WIDTH_ENV, "").strip()
    try:
        width = int(raw) if raw else WIDTH
    except ValueError:
        width = 0
    if not 1 <= width <= MAX_BATCH:
        raise ValueError(f"{WIDTH_ENV}={raw!r}: give a whole number of rows from 1 to {MAX_BATCH}")
    return join in ("1", "true", "yes", "on"), width


class Stopped(Exception):
    """Ends a batch's decode at its next reported step: none of its rows is wanted any more."""


# --- what a job reports -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    batch: int  # rows decoded together (this one included)
    waited: float  # seconds between submit and the start of its decode


@dataclass(frozen=True)
class Steps:
    events: list[StepEvent]  # this row's steps since the last report (row index 0: the job's own view)


@dataclass(frozen=True)
class Finished:
    tokens: list[int]  # the answer, cut after its first stop token and at max_new_tokens
    stats: Stats | None  # None when it was stopped
    stopped: bool


@dataclass(frozen=True)
class Failed:
    error: BaseException


Update = Started | Steps | Finished | Failed


@dataclass
class Job:
    """One visitor's decode: one prompt row with its own limit and stop flag."""

    model: LoadedModel
    ids: list[int]
    params: DecodeParams  # resolved (block length filled in), the model's stop tokens included
    stop: threading.Event = field(default_factory=threading.Event)
    visitor: str = ""  # whose device time this job counts as (app.exposure.visitor_of)
    budget: int | None = (
        None  # forwards this row may take (checked before, enforced while it runs); None: no cap
    )
    submitted: float = field(default_factory=time.perf_counter)
    updates: queue.Queue = field(default_factory=queue.Queue)
    ended: bool = False

    @property
    def key(self) -> tuple:
        """Jobs with equal keys can share one decode."""
        p = self.params
        if p.temperature > 0:
            return ("alone", id(self))
        return (
            id(self.model.model),
            p.strategy,
            p.block_length,
            p.steps,
            p.threshold,
            p.entropy_bound,
            p.top_k,
            p.top_p,
            tuple(p.stop_token_ids),
        )

    def updates_until_done(self, poll: float = 0.1) -> Iterator[Update]:
        """Every update, until Finished or Failed; sets nothing itself (Stop is the job's `stop` flag)."""
        while True:
            try:
                u = self.updates.get(timeout=poll)
            except queue.Empty:
                continue
            yield u
            if isinstance(u, (Finished, Failed)):
                return


@dataclass(eq=False)
class Lease:
    """The device lent to one visitor's timed decodes (a race lane's run, a sweep point): queued like a job, granted
    when its turn comes (the scheduler then holds the device for it and decodes nothing else), charged for the
    seconds it held it when given back."""

    visitor: str
    stop: threading.Event
    submitted: float = field(default_factory=time.perf_counter)
    granted: threading.Event = field(default_factory=threading.Event)
    returned: threading.Event = field(default_factory=threading.Event)
    granted_at: float = 0.0
    ended: bool = False

    @property
    def key(self) -> tuple:
        return ("lease", id(self))  # never shares a turn

    def give_back(self) -> None:
        self.returned.set()


class DecodeScheduler:
    """The decodes of one device (see the module docstring). `pad_batches`: round batches up to a power of two
    (on a GPU, so that graph captures stay few)."""

    def __init__(
        self,
        name: str = "device",
        max_batch: int = MAX_BATCH,
        lock: threading.Lock = DEVICE,
        gather: tuple[float, float] = (GATHER_QUIET, GATHER_MAX),
        join: bool = True,
        width: int = 1,
    ) -> None:
        self.name, self.max_batch, self.lock = name, max_batch, lock
        self.join = join  # waiting jobs join a running batch at its block boundaries (the module docstring)
        self.width = width  # rows a batch holds at least (free ones for jobs that join; at most max_batch)
        self.gather_quiet, self.gather_max = gather  # see GATHER_QUIET, GATHER_MAX; (0, 0): take at once
        self.waiting: list[Job | Lease] = []
        self.in_flight: list = []  # the batch (or the lease) on the device
        self.batches = 0  # decodes started so far
        self.usage: dict[
            str, tuple[float, float]
        ] = {}  # visitor -> (device-seconds, perf_counter when counted)
        self.turns: list[str] = []  # the visitors served, in order (the last TURNS_KEPT): what tests read
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._nested = 0  # turns running inside a paused batch (make_way)

    @property
    def load(self) -> int:
        """Rows waiting or decoding: what routing to the least-loaded device compares."""
        with self._cv:
            return len(self.waiting) + sum(not job.ended for job in self.in_flight)

    def submit(self, job: Job) -> Job:
        """Queue `job` (checked first: a request that cannot decode fails here, in the caller's thread, and never
        spoils a batch)."""
        config = job.model.config
        job.params.check(config)
        check_fits(len(job.ids), job.params, config)
        self._enqueue(job)
        return job

    def _enqueue(self, item: Job | Lease) -> None:
        with self._cv:
            self.waiting.append(item)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, daemon=True, name=f"sdar-scheduler-{self.name}"
                )
                self._thread.start()
            self._cv.notify()

    def lease(self, visitor: str, stop: threading.Event, wait: float) -> Lease | None:
        """The device for `visitor`'s timed decodes once its turn comes (give it back with `Lease.give_back`); None
        when `stop` is set first; Busy after `wait` seconds."""
        lease = Lease(visitor, stop)
        self._enqueue(lease)
        deadline = time.monotonic() + wait
        while not lease.granted.wait(0.1):
            if stop.is_set() or time.monotonic() > deadline:
                with self._cv:
                    if lease.ended:  # dropped unrun: it was stopped while it waited
                        return None
                    if lease in self.waiting:  # not granted: withdrawn
                        self.waiting.remove(lease)
                        lease.ended = True
                        if stop.is_set():
                            return None
                        raise Busy(BUSY_MESSAGE)
                lease.granted.wait()  # granted meanwhile: taken, and given back by the caller
                break
        return lease

    def fresher_waiting(self, visitor: str, held: float = 0.0) -> bool:
        """Whether another visitor who used the device at least TURN_QUANTUM less than `visitor` (counting the `held`
        seconds of its turn in flight) is waiting: then `visitor`'s timed decode gives way at its next block
        boundary."""
        with self._cv:
            if not self.waiting:
                return False
            now = time.perf_counter()
            mine = self.used(visitor, now) + held - TURN_QUANTUM
            return any(
                j.visitor != visitor and not j.stop.is_set() and self.used(j.visitor, now) < mine
                for j in self.waiting
            )

    def used(self, visitor: str, now: float | None = None) -> float:
        """`visitor`'s device-seconds, decayed to now."""
        with self._cv:
            seconds, at = self.usage.get(visitor, (0.0, 0.0))
        now = time.perf_counter() if now is None else now
        return seconds * 0.5 ** ((now - at) / USAGE_HALF_LIFE)

    def charge(self, visitor: str, seconds: float) -> None:
        """Count `seconds` of device time to `visitor` (visitors whose time has decayed to nothing are forgotten)."""
        now = time.perf_counter()
        total = self.used(visitor, now) + seconds
        with self._cv:
            self.usage[visitor] = (total, now)
            if len(self.usage) > USAGE_KEPT:  # the least recent users go: they would be first in line anyway
                left = sorted(
                    self.usage,
                    key=lambda v: self.usage[v][0] * 0.5 ** ((now - self.usage[v][1]) / USAGE_HALF_LIFE),
                )
                for v in left[: len(self.usage) - USAGE_KEPT // 2]:
                    del self.usage[v]

    def _loop(self) -> None:
        while True:
            self._wait_for_work()
            with self.lock:  # the batch is chosen once the device is free: whoever came meanwhile joins it
                self._gather()
                self.take_turn()

    def take_turn(self) -> None:
        """Schedule the next turn and run it (a batch) or lend it (a lease); the caller holds the device."""
        batch = self.schedule()
        if not batch:
            return
        if isinstance(batch[0], Lease):
            self.lend(batch[0])
            return
        try:
            self.run(batch)
        except (
            BaseException
        ) as e:  # reported to every job of the batch (joined ones too); the scheduler goes on
            with self._cv:
                jobs = list(self.in_flight)
            if not isinstance(e, GenerationError):
                log.exception("a batch of %d rows failed", len(jobs))
            for job in jobs:
                end(job, Failed(e))
        finally:
            with self._cv:
                self.in_flight = []

    def make_way(self, rowing: BatchRows) -> None:
        """At a block boundary of a batch decoding on a plain runner (its cache is its own): when a fresher visitor
        waits, run that visitor's turn now, inside the paused batch, and go on after (at most MAX_NESTED deep). A
        long answer then keeps a fresh visitor's chat waiting for one of its blocks, not for all of them; the pause
        is not the batch's time."""
        if self._nested >= MAX_NESTED:
            return
        active = {job.visitor for job in rowing.batch if not job.ended}
        with self._cv:
            if not active or not self.waiting:
                return
            now = time.perf_counter()
            held = (now - rowing.t0 - rowing.paused) / len(active)
            mine = min(self.used(v, now) for v in active) + held - TURN_QUANTUM
            if not any(
                j.visitor not in active and not j.stop.is_set() and self.used(j.visitor, now) < mine
                for j in self.waiting
            ):
                return
            outer = self.in_flight
        t0 = time.perf_counter()
        self._nested += 1
        try:
            self.take_turn()
        finally:
            self._nested -= 1
            with self._cv:
                self.in_flight = outer
            rowing.paused += time.perf_counter() - t0

    def _gather(self) -> None:
        """Wait, on the idle device, while jobs are still arriving (see GATHER_QUIET): until none came for
        `gather_quiet` s, `gather_max` s have passed since the oldest one, a full batch waits or a lease does."""
        with self._cv:
            while self.waiting and not any(isinstance(j, Lease) for j in self.waiting):
                if len(self.waiting) >= self.max_batch:
                    return
                now = time.perf_counter()
                quiet = self.gather_quiet - (now - max(j.submitted for j in self.waiting))
                left = self.gather_max - (now - min(j.submitted for j in self.waiting))
                if quiet <= 0 or left <= 0:
                    return
                self._cv.wait(min(quiet, left))

    def _wait_for_work(self) -> None:
        with self._cv:
            while not self.waiting:
                self._cv.wait()

    def schedule(self) -> list[Job] | list[Lease]:
        """The next turn: the waiting job (or lease) of the visitor who used the device least lately (the oldest
        first among equals) and the waiting jobs that share its key, in the same order; none when nothing waits.
        Jobs stopped while they waited end here, unrun."""
        with self._cv:
            for job in [j for j in self.waiting if j.stop.is_set()]:
                self.waiting.remove(job)
                if isinstance(job, Lease):
                    job.ended = True
                else:
                    end(job, Finished([], None, stopped=True))
            if not self.waiting:
                return []
            now = time.perf_counter()
            used = {v: self.used(v, now) for v in {j.visitor for j in self.waiting}}
            order = sorted(self.waiting, key=lambda j: (used[j.visitor], j.submitted))
            key = order[0].key
            batch = [j for j in order if j.key == key][: self.max_batch]
            for job in batch:
                self.waiting.remove(job)
            self.in_flight = batch
            self.turns = (self.turns + [batch[0].visitor])[-TURNS_KEPT:]
            return batch

    def lend(self, lease: Lease) -> None:
        """Hold the device for `lease` until it is given back (the caller holds the device lock); charge it."""
        t0 = lease.granted_at = time.perf_counter()
        lease.granted.set()
        lease.returned.wait()
        self.charge(lease.visitor, time.perf_counter() - t0)
        with self._cv:
            lease.ended = True
            self.in_flight = []

    def run(self, batch: list[Job]) -> None:
        """One decode of the batch's rows (the caller holds the device), each job told its steps and its end as
        soon as its row has them; jobs that wait for a free row join it at its block boundaries."""
        first = batch[0]
        model, p = first.model.model, first.params
        rows = [job.ids for job in batch]
        width = max(len(rows), min(self.width, self.max_batch))
        if p.runner_mode != "plain" and model.device.type == "cuda":
            width = min(1 << (width - 1).bit_length(), max(self.max_batch, len(rows)))  # a power of two
        longest = max(job.params.max_new_tokens for job in batch)
        plain = (p.runner_mode or default_mode(model)) == "plain"
        rowing = BatchRows(batch, p, on_block=self.make_way if plain else None)
        joining = None
        if self.join and (first.model.is_sdar or p.strategy != "ar"):
            joining = BatchJoining(self, rowing, first.key, width)
        else:
            rows += [rows[0]] * (width - len(rows))  # copies of the first row, whose steps nobody reads
        self.batches += 1
        rowing.start()
        try:
            generate(
                model,
                rows,
                replace(p, max_new_tokens=longest, trace=False),
                on_step=rowing.on_step,
                join=joining,
            )
        except Stopped:
            pass
        finally:
            self.charge_rows(rowing)
        rowing.close()

    def admit(self, key: tuple, room: Room) -> list[Job]:
        """The waiting jobs that join a running batch of `key` at a block boundary offering `room`: in turn order
        (see schedule), until the first that cannot (another key, a lease, a prompt or answer that does not fit) or
        the room's rows are taken. Jobs stopped while they waited are left for schedule to end."""
        with self._cv:
            if not self.waiting or not room.rows:
                return []
            now = time.perf_counter()
            used = {v: self.used(v, now) for v in {j.visitor for j in self.waiting}}
            taken: list[Job] = []
            for job in sorted(self.waiting, key=lambda j: (used[j.visitor], j.submitted)):
                if job.stop.is_set():
                    continue
                if len(taken) == room.rows or job.key != key:
                    break
                if not room.fits(len(job.ids), job.params.max_new_tokens):
                    break
                taken.append(job)
            for job in taken:
                self.waiting.remove(job)
                self.in_flight.append(job)
            return taken

    def charge_rows(self, rowing: BatchRows) -> None:
        """The batch's device time, shared among its visitors by the forwards of their rows."""
        seconds, total = time.perf_counter() - rowing.t0 - rowing.paused, sum(rowing.forwards) or 1
        for job, forwards in zip(rowing.batch, rowing.forwards):
            self.charge(job.visitor, seconds * max(forwards, 1) / total)


class SchedulerTurn:
    """A race's or a sweep's turns on the device, each queued on its scheduler as `visitor`'s (streaming.LockTurn's
    two methods)."""

    def __init__(self, scheduler: DecodeScheduler, visitor: str, wait: float = BUSY_WAIT) -> None:
        self.scheduler, self.visitor, self.wait = scheduler, visitor, wait
        self.lease: Lease | None = None

    def take(self, stop: threading.Event) -> bool:
        lease = self.scheduler.lease(self.visitor, stop, self.wait)
        if lease is not None and stop.is_set():
            lease.give_back()
            lease = None
        self.lease = lease
        return lease is not None

    def give_back(self) -> None:
        if self.lease is not None:
            self.lease.give_back()
            self.lease = None

    def make_way(self, stop: threading.Event) -> float:
        """At a block boundary of the decode this turn holds: when a fresher visitor waits, give the device back and
        queue for it again (that visitor goes first); the seconds it waited (0 when nobody fresher waits). When
        `stop` is set meanwhile, the turn is not taken again."""
        lease = self.lease
        if lease is None or not self.scheduler.fresher_waiting(
            self.visitor, time.perf_counter() - lease.granted_at
        ):
            return 0.0
        t0 = time.perf_counter()
        self.give_back()
        self.take(stop)
        return time.perf_counter() - t0


class BatchJoining:
    """A running batch's `Joining` (sdar_core.decoding): at each block boundary with a free row, the waiting jobs the
    scheduler lets join (DecodeScheduler.admit) become rows of the batch."""

    def __init__(self, scheduler: DecodeScheduler, rowing: BatchRows, key: tuple, width: int) -> None:
        self.scheduler, self.rowing, self.key, self.width = scheduler, rowing, key, width

    def admit(self, room: Room) -> list[Arrival]:
        jobs = self.scheduler.admit(self.key, room)
        self.rowing.add(jobs, room.index)
        return [Arrival(job.ids, job.params.max_new_tokens) for job in jobs]


def end(job: Job, update: Update) -> None:
    if not job.ended:
        job.ended = True
        job.updates.put(update)


class BatchRows:
    """Routes a batch decode's step events to its jobs and ends each job when its row is complete: its first stop
    token, or its own max_new_tokens (the rows after it in the batch may go on)."""

    def __init__(self, batch: list[Job], p: DecodeParams, on_block=None) -> None:
        self.p, self.on_block = p, on_block  # on_block(self): once per block, at its end
        self.paused = 0.0  # seconds the decode waited inside on_step for other turns (make_way)
        self.finals: dict[int, set[int]] = {}  # block -> rows that ended it so far
        self.stop_ids = set(p.stop_token_ids)
        self.pending: list[list[StepEvent]] = []
        self.tokens: list[list[int]] = []
        self.forwards: list[int] = []
        self.blocks: list[list[int]] = []
        self.joined: list[
            tuple[float, float]
        ] = []  # per row: (perf_counter, self.paused) when its decode began
        self.first_block: list[int] = []  # per row: the batch's block its own block 0 is
        self.t0 = 0.0
        self.batch: list[Job] = []  # every row's job: the batch's, then those that joined it
        self.starting = batch

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.add(self.starting)

    def add(self, jobs: list[Job], block: int = 0) -> None:
        """Rows for `jobs`, numbered after the rows already here (the decoder numbers joined rows the same way),
        starting at the batch's block `block`, each told it started."""
        now = time.perf_counter()
        for job in jobs:
            self.first_block.append(block)
            self.batch.append(job)
            self.pending.append([])
            self.tokens.append([])
            self.forwards.append(0)
            self.blocks.append([])
            self.joined.append((now, self.paused))
        open_rows = sum(not job.ended for job in self.batch)
        for job in jobs:
            job.updates.put(Started(open_rows, now - job.submitted))

    def on_step(self, e: StepEvent) -> None:
        if e.row >= len(self.batch):  # a padding row
            return
        job = self.batch[e.row]
        if job.ended:
            self._all_ended()
            return
        if job.stop.is_set():
            self._finish(e.row, stopped=True)
            self._all_ended()
            return
        if job.budget is not None and self.forwards[e.row] >= job.budget:  # its budget is spent: it ends here
            self._finish(e.row, stopped=True)
            self._all_ended()
            return
        self.pending[e.row].append(e)
        self.forwards[e.row] += 1
        if not e.final:
            return
        prompt = set(e.prompt_positions)
        self.tokens[e.row] += [t for off, t in enumerate(e.block_state) if off not in prompt]
        self.blocks[e.row].append(e.step + 1)
        job.updates.put(Steps(self.pending[e.row]))
        self.pending[e.row] = []
        if self._complete(e.row):
            self._finish(e.row, stopped=False)
            self._all_ended()
        if self.on_block is not None:
            block = self.first_block[e.row] + e.block  # the batch's block
            done = self.finals.setdefault(block, set())
            done.add(e.row)
            if all(
                job.ended or r in done or self.first_block[r] > block for r, job in enumerate(self.batch)
            ):  # every open row ended the block
                del self.finals[block]
                self.on_block(self)

    def _complete(self, r: int) -> bool:
        limit = self.batch[r].params.max_new_tokens
        return len(self.tokens[r]) >= limit or any(t in self.stop_ids for t in self.tokens[r][:limit])

    def _answer(self, r: int) -> list[int]:
        out = []
        for t in self.tokens[r][: self.batch[r].params.max_new_tokens]:
            out.append(t)
            if t in self.stop_ids:
                break
        return out

    def _finish(self, r: int, stopped: bool) -> None:
        job = self.batch[r]
        if self.pending[r]:
            job.updates.put(Steps(self.pending[r]))
            self.pending[r] = []
        tokens = self._answer(r)
        p = job.params
        stats = (
            None
            if stopped
            else Stats(
                strategy=p.strategy,
                block_length=p.block_length,
                steps=p.steps,
                batch_size=1,
                prompt_tokens=len(job.ids),
                new_tokens=len(tokens),
                forwards=self.forwards[r],
                prefill_forwards=int(
                    len(job.ids) >= p.block_length if p.strategy != "ar" else len(job.ids) > 1
                ),
                seconds=time.perf_counter() - self.joined[r][0] - (self.paused - self.joined[r][1]),
                prefill_seconds=0.0,
                steps_per_block=[self.blocks[r]],
                new_tokens_per_row=[len(tokens)],
            )
        )
        end(job, Finished(tokens, stats, stopped))

    def _all_ended(self) -> None:
        if all(job.ended for job in self.batch):
            raise Stopped()

    def close(self) -> None:
        """The decode is over: a row still open ends now (its last block reached the batch's limit)."""
        for r, job in enumerate(self.batch):
            if not job.ended:
                self._finish(r, stopped=job.stop.is_set())
