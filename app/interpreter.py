"""The studio's one Python interpreter, which the decode loop shares with Gradio and every page's handler.

The decode loop releases the GIL at every torch call (dozens per denoising step) and must win it back each time.
While another thread runs Python (Gradio encoding a message, a handler building one), the loop waits until that
thread lets go, which CPython asks of it only every `sys.getswitchinterval()` seconds (5 ms by default): a few busy
threads can then slow a GPU decode many times over. The studio therefore switches threads every SWITCH_INTERVAL
seconds (`SDAR_SWITCH_INTERVAL` overrides it; benchmarks/NOTES.md, "The studio serves a crowd", has the measurement).

A watch for finding where a served request's seconds go: `SDAR_STALL_REPORT=<seconds>`.

A thread wakes every TICK seconds. When it could not run for longer than the threshold (another thread held the
interpreter: a long call into C that keeps the GIL, such as a compiler), Python's faulthandler, whose own watchdog
needs no GIL, has written every thread's stack to stderr at that moment, and the watch logs how long the hold lasted.
While the interpreter is held, Gradio's event loop cannot send anything either: a visitor's answer then arrives all
at once, late. Off unless the person who runs the studio sets the variable; the crowd benchmark sets it.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time

log = logging.getLogger(__name__)
TICK = 0.05  # seconds between two looks
ENV = "SDAR_STALL_REPORT"
SWITCH_ENV = "SDAR_SWITCH_INTERVAL"
SWITCH_INTERVAL = 0.0002  # seconds a thread may keep the GIL while another waits (CPython's default: 0.005)


def set_switch_interval(env=os.environ) -> float:
    """Set the interpreter's thread switch interval: SDAR_SWITCH_INTERVAL seconds, else SWITCH_INTERVAL; the value
    set."""
    value = env.get(SWITCH_ENV, "").strip()
    try:
        seconds = float(value) if value else SWITCH_INTERVAL
    except ValueError:
        raise ValueError(f"{SWITCH_ENV} must be a number of seconds, not {value!r}") from None
    if not 0 < seconds <= 1:
        raise ValueError(f"{SWITCH_ENV} must be between 0 and 1 second, not {value}")
    sys.setswitchinterval(seconds)
    return sys.getswitchinterval()


class StallWatch:
    """Logs every hold of the interpreter longer than `threshold` seconds (the stacks go to `file`)."""

    def __init__(self, threshold: float, file=None, tick: float = TICK) -> None:
        if not threshold > tick:
            raise ValueError(f"the stall threshold must be longer than {tick} s, not {threshold!r}")
        self.threshold, self.tick, self.file = threshold, tick, file or sys.stderr
        self.stalls: list[float] = []  # seconds of each hold seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="sdar-stall-watch")

    def start(self) -> StallWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set():
            faulthandler.dump_traceback_later(self.threshold, file=self.file)
            t0 = time.perf_counter()
            self._stop.wait(self.tick)
            held = time.perf_counter() - t0 - self.tick
            faulthandler.cancel_dump_traceback_later()
            if held + self.tick > self.threshold:
                self.stalls.append(held)
                log.warning("the interpreter was held for %.2f s (every thread's stack is above)", held)


def watch_from_env(env=os.environ) -> StallWatch | None:
    """The watch, started when SDAR_STALL_REPORT names a threshold in seconds; None when it is unset."""
    value = env.get(ENV, "").strip()
    if not value:
        return None
    try:
        threshold = float(value)
    except ValueError:
        raise ValueError(f"{ENV} must be a number of seconds, not {value!r}") from None
    log.info(
        "stall watch on: holds of the interpreter over %.2f s are logged with every thread's stack", threshold
    )
    return StallWatch(threshold).start()
