"""One shown decode as a handler sees it: a scheduler Job, the Feed the page draws, and the answer.

`Run.follow()` yields whenever there is something new to send, and returns when the job ends. The page draws at
its own pace, so the server sends what accumulated rather than one message per step: at most one message every
FRAME_INTERVAL per page, and at most MESSAGE_RATE messages a second to all pages together (a crowd's pages each get
fewer, larger messages). Every message costs the server's interpreter some work (the handler, Gradio's encoding),
and that interpreter is the one the decode loop runs on: a crowd's messages must not slow its decode.
The answer's text has one source, `answer_text`: the tokenizer's decoding of the kept tokens, the same for the
chat bubble, the recording and the API.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from sdar_core.trace import Stats, StepEvent

from .feed import Feed
from .registry import LoadedModel
from .render import FrameBuilder, frame_text, kept_answer_end
from .scheduler import Failed, Finished, Job, Started, Steps
from .streaming import FRAME_INTERVAL

MESSAGE_RATE = 40.0  # messages a second to all the pages that follow a decode, together
WATCH_MS = (
    120  # the watch replay's default delay per frame: a 4-token block filled in one step stays masked 120 ms
)
_RUNS = itertools.count(1)


class Following:
    """How many runs are being followed right now, and so how often each may send."""

    def __init__(self) -> None:
        self.count, self._lock = 0, threading.Lock()

    def __enter__(self) -> Following:
        with self._lock:
            self.count += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self.count -= 1

    def interval(self) -> float:
        """Seconds between two messages of one run: FRAME_INTERVAL, longer when the runs followed together would
        send more than MESSAGE_RATE messages a second."""
        return max(FRAME_INTERVAL, self.count / MESSAGE_RATE)


FOLLOWING = Following()


@dataclass
class Run:
    job: Job
    notes: list[str]
    title: str = ""
    feed: Feed = None
    events: list[StepEvent] = field(default_factory=list)
    pieces: dict[int, str] = field(default_factory=dict)
    tokens: list[int] | None = None  # the kept answer, once finished
    stats: Stats | None = None
    stopped: bool = False
    batch: int = 1  # rows decoded together with this one
    waited: float = 0.0  # seconds from the request to the start of its decode (the device busy, or a batch)
    decoded: float = 0.0  # seconds from the start of its decode to its row's end
    # seconds after the request when each message left follow()
    sent: list[float] = field(default_factory=list)
    outside: float = 0.0  # seconds Gradio kept the handler between two messages (sending the one before)
    frames: FrameBuilder = None  # the live frame, one step pushed at a time as the steps arrive

    def __post_init__(self) -> None:
        p = self.job.params
        self.feed = Feed(
            run=next(_RUNS),
            title=self.title,
            block_length=p.block_length,
            ar=p.strategy == "ar",
            pace_ms=0.0,
            stop_ids=list(p.stop_token_ids),
        )
        self.frames = FrameBuilder(stop_ids=p.stop_token_ids)

    @property
    def model(self) -> LoadedModel:
        return self.job.model

    def follow(self, interval: float | None = None) -> Iterator[None]:
        """Apply the job's updates as they come; yield when new steps arrived (at most every `interval` seconds,
        FOLLOWING's when None; the rest held back until then); raise the decode's error; return at its end (the
        feed then says done or stopped, and the caller sends the final state)."""
        with FOLLOWING:
            yield from self._follow(interval)

    def _follow(self, fixed: float | None) -> Iterator[None]:
        sent, shown = 0, -math.inf
        while True:
            interval = FOLLOWING.interval() if fixed is None else fixed
            held = len(self.events) > sent
            wait = max(0.0, shown + interval - time.perf_counter()) if held else 0.5
            try:
                update = self.job.updates.get(timeout=wait)
            except queue.Empty:
                update = None
            if update is not None and self._apply(update):
                return
            if len(self.events) > sent and time.perf_counter() - shown >= interval:
                sent, shown = len(self.events), time.perf_counter()
                self.sent.append(shown - self.job.submitted)
                yield
                self.outside += time.perf_counter() - shown

    def _apply(self, u) -> bool:
        """Take one update in; True once the job has ended."""
        if isinstance(u, Started):
            self.batch, self.waited = u.batch, u.waited
        elif isinstance(u, Steps):
            self.events.extend(u.events)
            for e in u.events:
                self.frames.push(e)
            pieces = {}
            for e in u.events:
                pieces.update(self.model.event_pieces(e))
            self.pieces.update(pieces)
            self.feed.push(u.events, pieces)
        elif isinstance(u, Failed):
            self.feed.finish("failed")
            raise u.error
        elif isinstance(u, Finished):
            self.stopped, self.stats = u.stopped, u.stats
            self.decoded = time.perf_counter() - (self.job.submitted + self.waited)  # the decode began then
            self.tokens = None if u.stopped else u.tokens
            end = kept_answer_end(self.events, len(u.tokens)) if not u.stopped else None
            self.feed.finish(
                "stopped" if u.stopped else "done",
                end,
                note="Stopped: what was committed before Stop stays." if u.stopped else "",
            )
            return True
        return False

    def _frame(self):
        """The frame after the last step received (None before any step)."""
        return self.frames.frame

    def committed_tokens(self) -> list[int]:
        """The tokens committed so far, in answer order, up to the first stop token (a stopped run's answer)."""
        frame = self._frame()
        return (
            []
            if frame is None
            else [c.token for c in frame.done + frame.block if c.token is not None and not c.discarded]
        )

    def answer_text(self) -> str:
        """The answer as the chat shows it: the kept tokens decoded, special tokens left out."""
        tokens = self.tokens if self.tokens is not None else self.committed_tokens()
        return self.model.tokenizer.decode(tokens, skip_special_tokens=True)

    def text_so_far(self) -> str:
        """What the decode has committed so far, as the chat bubble shows it while it runs."""
        frame = self._frame()
        return "" if frame is None else frame_text(frame, self.pieces, self.model.stop_token_ids, masks=False)

    def timeline(self) -> str:
        """Where a request's time went on the server, for the log: what the crowd benchmark compares with the time
        its visitors saw (the rest is Gradio's delivery and the network)."""
        answered = time.perf_counter() - self.job.submitted
        first = f"{self.sent[0]:.3f} s" if self.sent else "never"
        return (
            f"{len(self.tokens or [])} tokens, waited {self.waited:.3f} s for the device, decoded in "
            f"{self.decoded:.3f} s (batch {self.batch}), answered {answered:.3f} s after the request; "
            f"{len(self.sent)} messages before the answer, the first at {first}, {self.outside:.3f} s in Gradio "
            "between them"
        )

    def batch_note(self) -> str:
        if self.batch <= 1:
            return ""
        return f"_Decoded in one batch with {self.batch - 1} other visitor request{'s' * (self.batch > 2)}._"
