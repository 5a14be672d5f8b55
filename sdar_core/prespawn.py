"""The kernel-compiling worker processes of a cold start (sdar_core.warmup.precompile), started before torch is
imported: the standard library only, here and in what this module imports.

A server that will warm a GPU model calls `spawn_workers` first: each worker imports torch and sdar_core while the
server does the same, then waits on its stdin for the job that `precompile` sends once the server knows its plan
(the model's config, the shapes). Started later, after the server's own imports, a worker pays those imports (3-4 s on
an H100 machine) after them. A worker that gets no job (its stdin closed empty) exits at once.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

PRECOMPILE_ENV = "SDAR_PRECOMPILE"  # 0: no worker processes compile kernels while the start model loads
WORKER_MODULE = "sdar_core.warmup"  # `python -m sdar_core.warmup`: a worker


def default_workers() -> int:
    """One worker per 4 CPUs, at least 1, at most 4."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def switched_off(env=os.environ) -> bool:
    """The operator's SDAR_PRECOMPILE=0."""
    return env.get(PRECOMPILE_ENV, "1").strip() == "0"


def nvidia_device_present() -> bool:
    """Whether the machine shows an NVIDIA GPU (its device files), told without importing torch. A guess for
    `spawn_workers`: torch may still see no device (a CPU build, CUDA_VISIBLE_DEVICES=""), and then `release`
    lets the workers go."""
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def spawn(count: int) -> list[subprocess.Popen]:
    """`count` workers, each waiting for its job on stdin; each process carries `spawned`, its start (time.time()),
    from which its log lines count."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `sdar_core` imports from
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    procs = []
    for _ in range(count):
        proc = subprocess.Popen([sys.executable, "-m", WORKER_MODULE], stdin=subprocess.PIPE, env=env)
        proc.spawned = time.time()
        procs.append(proc)
    return procs


def spawn_workers(workers: int | None = None, env=os.environ) -> list[subprocess.Popen]:
    """At a server's start, before its imports: `workers` (default: default_workers()) waiting workers where a GPU
    is likely and the operator has not switched precompiling off; none elsewhere (then `precompile` starts its own,
    later, if it finds a GPU). Pass them to `precompile(..., spawned=)`, or to `release` if there is nothing to
    compile."""
    if switched_off(env) or not nvidia_device_present():
        return []
    return spawn(workers or default_workers())


def release(procs: list[subprocess.Popen]) -> None:
    """Workers that will get no job: their stdin closed empty, so that each exits as soon as its imports end."""
    for proc in procs:
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
