"""Watching a decode at a human pace. The decode runs at full speed and releases the device; then its
recording's frames (render.watch_frames: every block's opening, every step) are shown one every `pace_ms`.
A replay is display only: it never holds the device, and Stop ends it on the frame it shows."""
from __future__ import annotations

import math
import threading
from typing import Iterator, Sequence

from .render import Frame

WATCH_MS = 120  # the default delay per frame: a 4-token block that fills in one step stays masked for 120 ms
MAX_WATCH_SECONDS = 20.0  # a longer answer skips frames evenly rather than play for minutes


def schedule(n_frames: int, pace_ms: float) -> list[int]:
    """The indices of the frames a replay shows: all of them, or evenly spaced ones (the last always) when
    showing each for pace_ms would take longer than MAX_WATCH_SECONDS."""
    if n_frames <= 0:
        return []
    stride = max(1, math.ceil(n_frames * pace_ms / 1000 / MAX_WATCH_SECONDS))
    shown = list(range(0, n_frames, stride))
    return shown if shown[-1] == n_frames - 1 else shown + [n_frames - 1]


def paced(frames: Sequence[Frame], pace_ms: float, stop: threading.Event) -> Iterator[tuple[int, Frame]]:
    """(index, frame) of each scheduled frame, pace_ms apart; ends as soon as `stop` is set (the frame shown
    last stays: the caller compares its index with the last one to know whether the replay was stopped)."""
    for k, i in enumerate(schedule(len(frames), pace_ms)):
        if k and stop.wait(pace_ms / 1000):  # wakes at once on Stop
            return
        if stop.is_set():
            return
        yield i, frames[i]
