"""Start SDAR Studio: `python app.py`, the `sdar-studio` command (`pip install -e .`) and a Hugging Face Space all
run `main` here.

    sdar-studio [--model assets/models/sdar-tiny] [--host 127.0.0.1] [--port 7860] [--share] [--allow-any-model]

It opens the embedded sdar-tiny (and races it against ar-tiny), runs on the CPU when there is no GPU, and
downloads nothing (hub ids typed in the model box are fetched when used). The embedded models are found next to the
package (sdar_core/paths.py), whatever the working directory. Gradio's own variables apply too
(GRADIO_SERVER_NAME, GRADIO_SERVER_PORT, GRADIO_SHARE, ...); a flag given on the command line wins over them.

Served beyond the loopback interface (another --host, --share, or a Hugging Face Space), or reached through a
proxy or from another address, a request loads only the shipped models and the curated SDAR / Qwen3 hub ids
(app/exposure.py); --allow-any-model lets every visitor load any folder of this machine or any hub id.

SDAR_KERNEL_CACHE=<folder> keeps the compiled GPU kernels there (Triton's and inductor's caches, unless their own
variables are set): point it at storage that outlives the process (a Space's persistent /data) and a restart skips
the kernel compilation of the warm-up.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from the server

# Only the standard library above this line's module: `main` starts the kernel-compiling workers first, so that
# their imports (torch, sdar_core) run beside its own (sdar_core/prespawn.py), then imports the studio; Gradio's
# modules (app.layout, app.studio, app.ui) last, once the workers have their jobs (app/warming.py).
from sdar_core import prespawn  # noqa: E402  (the package's names import lazily: no torch here)

log = logging.getLogger("sdar.app")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


KERNEL_CACHE_ENV = "SDAR_KERNEL_CACHE"
WEIGHTS_ENV = "SDAR_WEIGHTS"  # the default of --weights: dtype or fp8


def use_kernel_cache(env=os.environ) -> str | None:
    """SDAR_KERNEL_CACHE=<folder>: Triton's and inductor's kernel caches go under it (TRITON_CACHE_DIR,
    TORCHINDUCTOR_CACHE_DIR: a variable already set wins); the folder, None when unset. ValueError when the folder
    cannot be created or written. Called before the first kernel is compiled (both read their variable then)."""
    folder = env.get(KERNEL_CACHE_ENV, "").strip()
    if not folder:
        return None
    root = os.path.abspath(os.path.expanduser(folder))
    try:
        for name in ("triton", "inductor"):
            os.makedirs(os.path.join(root, name), exist_ok=True)
        probe = os.path.join(root, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ValueError(
            f"{KERNEL_CACHE_ENV}={folder!r} cannot hold the kernel caches: {e.strerror or e}"
        ) from None
    env.setdefault("TRITON_CACHE_DIR", os.path.join(root, "triton"))
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(root, "inductor"))
    return root


def exposed(host: str | None, share: bool | None, env=os.environ) -> bool:
    """Whether visitors other than this machine's users can reach the studio."""
    host = host or env.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    shared = share if share is not None else env.get("GRADIO_SHARE", "").lower() in ("1", "true", "yes")
    return bool(env.get("SPACE_ID")) or shared or host not in LOOPBACK


def main(argv: list[str] | None = None) -> None:
    try:  # the workers compile under the kernel cache's variables: set before they start
        cache, cache_error = use_kernel_cache(), None
    except ValueError as e:
        cache, cache_error = None, e
    spawned = prespawn.spawn_workers() if cache_error is None else []
    try:
        _start(argv, cache, cache_error, spawned)
    finally:  # workers still without a job (the start stopped before it sent them one) exit once imported
        prespawn.release(spawned)


def _start(argv: list[str] | None, cache: str | None, cache_error: ValueError | None, spawned: list) -> None:
    from app import warming
    from app.interpreter import set_switch_interval, watch_from_env
    from app.registry import DEFAULT_MODEL, ModelRegistry
    from app.scheduler import batching_from_env
    from sdar_core.loading import WEIGHT_CHOICES, weights_from_choice

    parser = argparse.ArgumentParser(description="SDAR Studio: chat with, visualise and race SDAR models")
    parser.add_argument(
        "--model",
        default=os.environ.get("SDAR_MODEL", DEFAULT_MODEL),
        help="checkpoint folder or hub id selected at start (default: %(default)s)",
    )
    parser.add_argument(
        "--host", default=None, help="address to serve on (default: GRADIO_SERVER_NAME or 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--share", action="store_true", default=None, help="make a public gradio.live link")
    parser.add_argument(
        "--allow-any-model",
        action="store_true",
        help="let visitors load any local folder or hub id, even when the studio is reachable "
        "beyond this machine (default there: the shipped models and the curated list only)",
    )
    parser.add_argument(
        "--weights",
        choices=WEIGHT_CHOICES,
        default=os.environ.get(WEIGHTS_ENV, "dtype"),
        help="fp8: load every model with float8 projections (a scale per row), half the bytes a decode step reads "
        f"on a GPU, at a small cost in quality (docs/performance.md); default: {WEIGHTS_ENV} or %(default)s",
    )
    args = parser.parse_args(argv)
    if args.weights not in WEIGHT_CHOICES:  # from the environment: argparse checks only the command line
        parser.error(f"{WEIGHTS_ENV}={args.weights!r}: use {' or '.join(WEIGHT_CHOICES)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up probes
    # AutoTokenizer reads config.json and warns that `sdar` is not a transformers model type: expected here.
    logging.getLogger("transformers.configuration_utils").addFilter(
        lambda record: "to instantiate a model of type" not in record.getMessage()
    )

    try:
        log.info(
            "the interpreter switches threads every %.2f ms (app/interpreter.py)", 1e3 * set_switch_interval()
        )
        watch_from_env()  # SDAR_STALL_REPORT: a diagnostic for the person who runs the studio, off by default
        if cache_error is not None:
            raise cache_error
        if cache is not None:
            log.info("GPU kernels are cached in %s (%s)", cache, KERNEL_CACHE_ENV)
        join, width = batching_from_env()
        log.info(
            "a batch holds at least %d row(s); rows %s",
            width,
            "join a running batch at its block boundaries" if join else "wait for the next batch",
        )
    except ValueError as e:
        parser.error(str(e))
    registry = ModelRegistry(
        allow_any_model=args.allow_any_model,
        exposed=exposed(args.host, args.share),
        offered=(args.model,),
        weights=weights_from_choice(args.weights),
    )
    if registry.weights == "fp8":
        log.info("models load with float8 projections (--weights fp8 / %s)", WEIGHTS_ENV)
    if not registry.allow_any_model:  # app/exposure.py: a proxied or remote request is public on loopback too
        log.info("public requests load only the shipped and curated models (--allow-any-model lifts this)")
    # the kernels compiled while the rest loads, by the workers spawned at the start
    if workers := warming.start_precompile(registry, args.model, spawned=spawned):
        log.info(
            "%d processes compile the GPU kernels while the studio and the model load (%s=0: off)",
            workers,
            prespawn.PRECOMPILE_ENV,
        )
    from app.layout import LAUNCH_KWARGS
    from app.studio import WARMUP
    from app.ui import build_app

    t0 = time.perf_counter()
    try:  # load the start model now, so that the first answer does not wait for it and its card shows
        m = registry.get(args.model)
        log.info(
            "model %s loaded in %.1f s (%s, %s)",
            m.display_name,
            time.perf_counter() - t0,
            m.summary.get("device"),
            m.summary.get("dtype"),
        )
    except Exception as e:  # the app still starts; the model box says what is wrong when it is used
        log.warning("model %s not loaded: %s", args.model, e)
    if WARMUP.start(
        registry, args.model
    ):  # on a GPU: graph capture for the default settings, in the background
        log.info("GPU warm-up started: the first answers wait for at most one decode shape")
    demo = build_app(default_model=args.model, registry=registry)
    try:
        demo.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            prevent_thread_lock=True,
            quiet=True,
            **LAUNCH_KWARGS,
        )
    except OSError as e:  # e.g. the port is taken
        parser.exit(1, f"SDAR Studio could not start: {e}\n")
    log.info("SDAR Studio is running at %s", demo.local_url)
    if demo.share_url:
        log.info("public link: %s", demo.share_url)
    log.info("press Ctrl+C to stop")
    demo.block_thread()
