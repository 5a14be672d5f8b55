"""What one request may cost the device, counted in forwards (a forward is the unit every decode pays, whatever
the device: tokens/s varies, forwards do not).

Every decode is priced before it starts (DecodeSettings.forwards_bound: the prefill, then at most `steps` forwards
per block, one per token for AR) and enforced while it runs (a `Budget` spent one forward per step; the decode ends,
as stopped, once it is spent). A chat or visualizer request is priced alone; a race by all its lanes, warm-ups and
timed runs; a sweep by all its points. A race or a sweep over its budget is cut down to fewer timed runs, or refused
with the figures when even one run is over. An operator sets the budgets with environment variables:

    SDAR_CHAT_BUDGET   forwards of one chat or visualizer decode (default 2048: any request the settings allow)
    SDAR_RACE_BUDGET   forwards of one race, every lane and run together (default 6144)
    SDAR_SWEEP_BUDGET  forwards of one sweep, every point and run together (default 6144)
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from .settings import SettingsError

DEFAULTS = {"chat": 2048, "race": 6144, "sweep": 6144}


class OverBudget(SettingsError):
    """A request that would cost more forwards than its budget, refused before it starts."""


@dataclass(frozen=True)
class Budgets:
    chat: int = DEFAULTS["chat"]
    race: int = DEFAULTS["race"]
    sweep: int = DEFAULTS["sweep"]

    @classmethod
    def from_env(cls, environ=None) -> Budgets:
        """The budgets an operator set (SDAR_CHAT_BUDGET, SDAR_RACE_BUDGET, SDAR_SWEEP_BUDGET), else the defaults;
        a value that is not a positive whole number is a ValueError naming it."""
        environ = os.environ if environ is None else environ
        values = {}
        for kind, default in DEFAULTS.items():
            name = f"SDAR_{kind.upper()}_BUDGET"
            raw = environ.get(name, "").strip()
            try:
                values[kind] = int(raw) if raw else default
            except ValueError:
                values[kind] = 0
            if values[kind] < 1:
                raise ValueError(f"{name} must be a positive whole number of forwards, got {raw!r}")
        return cls(**values)


class Budget:
    """Forwards left to one request, spent by its decodes' steps (from any thread)."""

    def __init__(self, forwards: int) -> None:
        self.limit, self.spent = forwards, 0
        self._lock = threading.Lock()

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.limit

    def spend(self, forwards: int = 1) -> bool:
        """Count `forwards`; False (nothing counted) when they do not fit any more."""
        with self._lock:
            if self.spent + forwards > self.limit:
                self.spent = self.limit
                return False
            self.spent += forwards
            return True


def runs_within(budget: int, fixed: int, per_run: int, wanted: int) -> int:
    """How many of `wanted` timed runs fit in `budget` forwards after `fixed` (warm-ups): 0 when none does."""
    if per_run <= 0:
        return wanted
    return max(0, min(wanted, (budget - fixed) // per_run))
