"""Hub downloads the studio can give up on: each runs in a child process (`python -m app.downloads HUB_ID`), watched
by the loading thread and killed when it passes its deadline or falls below its minimum rate. A thread stuck in a
socket read cannot be stopped, and an orphaned one would hold huggingface_hub's file lock, so the next try would
wait behind it; a killed process releases its locks, and the partial file it leaves is resumed next time.

The child does what `sdar_core.load_pretrained` does for a hub id (the same timeouts, the same file patterns,
the local cache when offline) and prints the snapshot folder; the parent then loads the weights from that folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sdar_core.paths import REPO

POLL = 0.25  # seconds between two looks at the child and the bytes on disk


@dataclass(frozen=True)
class DownloadLimits:
    """When a download is abandoned: past `deadline` seconds in all, or below `min_rate` bytes/s averaged over the
    last `window` seconds, judged once `grace` seconds have passed (the hub's metadata calls move no bytes)."""

    deadline: float = 20 * 60.0
    min_rate: float = 1e6
    window: float = 60.0
    grace: float = 30.0

    @classmethod
    def from_env(cls, env=os.environ) -> DownloadLimits:
        """The defaults, with the operator's SDAR_DOWNLOAD_DEADLINE (seconds) and SDAR_DOWNLOAD_MIN_RATE (MB/s, 0:
        no minimum) when set; a value that is not a number >= 0 is a ValueError naming it."""
        limits = {}
        for var, name, scale in (
            ("SDAR_DOWNLOAD_DEADLINE", "deadline", 1.0),
            ("SDAR_DOWNLOAD_MIN_RATE", "min_rate", 1e6),
        ):
            text = env.get(var)
            if text is None or not text.strip():
                continue
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            if not value >= 0 or value == float("inf"):
                raise ValueError(f"{var}={text!r}: expected a number >= 0")
            limits[name] = value * scale
        return cls(**limits)

    def verdict(self, elapsed: float, samples: deque) -> str | None:
        """Why the download should stop now, or None; `samples` are (seconds since start, bytes), oldest first."""
        if elapsed > self.deadline:
            return f"it did not finish within {self.deadline:.0f} s"
        if elapsed < max(self.grace, self.window) or not samples:
            return None
        now_t, now_bytes = samples[-1]
        then_t, then_bytes = next(
            ((t, b) for t, b in reversed(samples) if now_t - t >= self.window), samples[0]
        )
        rate = (now_bytes - then_bytes) / max(now_t - then_t, 1e-9)
        if rate < self.min_rate:
            return (
                f"it moved {rate / 1e6:.2f} MB/s over the last {now_t - then_t:.0f} s, below the "
                f"{self.min_rate / 1e6:.2f} MB/s this studio waits for"
            )
        return None


class DownloadAbandoned(RuntimeError):
    """A download stopped by its limits; the message says which one."""


def download(
    hub_id: str,
    *,
    cache: str | None,
    limits: DownloadLimits,
    progress: Callable[[], int],
    report: Callable[[int], None] = lambda n: None,
) -> Path:
    """The local snapshot folder of `hub_id`, fetched by a child process into the hub cache `cache` (None: the
    default). `progress()` says how many bytes are on disk so far; each reading goes to `report`. Raises
    DownloadAbandoned when a limit is passed (the child is killed), or OSError with the child's own message."""
    import huggingface_hub.constants as hub

    env = dict(
        os.environ,
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    env["HF_HUB_CACHE"] = cache or hub.HF_HUB_CACHE  # the parent's cache, also when set in-process
    env["HF_HUB_OFFLINE"] = "1" if hub.HF_HUB_OFFLINE else "0"
    child = subprocess.Popen(
        [sys.executable, "-m", "app.downloads", hub_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    start, samples = time.monotonic(), deque()
    try:
        while True:
            try:
                out, _ = child.communicate(timeout=POLL)
                break
            except subprocess.TimeoutExpired:
                pass
            elapsed = time.monotonic() - start
            samples.append((elapsed, progress()))
            while samples and elapsed - samples[0][0] > 2 * limits.window:
                samples.popleft()
            report(samples[-1][1])
            reason = limits.verdict(elapsed, samples)
            if reason:
                raise DownloadAbandoned(f"the download of {hub_id!r} was abandoned: {reason}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    lines = out.strip().splitlines()
    answer = (
        json.loads(lines[-1])
        if lines and lines[-1].startswith("{")
        else {"error": f"the download ended (exit code {child.returncode})"}
    )
    if "folder" not in answer:
        raise OSError(answer["error"])
    return Path(answer["folder"])


def _main(hub_id: str) -> None:
    """The child: fetch `hub_id` as load_pretrained would and print {"folder": ...} or {"error": ...}."""
    from sdar_core.loading import resolve_checkpoint

    try:
        answer = {"folder": str(resolve_checkpoint(hub_id))}
    except Exception as e:  # CheckpointError names the repo and the cause; anything else, by type
        answer = {"error": str(e) or type(e).__name__}
    print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1])
