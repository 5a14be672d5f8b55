"""What every tab shares on the server: the model registry, the per-session stop flags, the decode scheduler of
each device, how a request becomes a Run on it (or a race Lane: the model loaded, SDAR settings turned into AR ones
on an AR model, the prompt ids), and the GPU warm-up at start."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

import gradio as gr
import torch

from sdar_core import DecodeParams
from sdar_core.warmup import needs_warm_up, warm_up

from .budget import Budgets, OverBudget
from .exposure import visitor_of
from .prompting import prompt_ids
from .registry import LoadedModel, LoadStatus, ModelRegistry, ModelUnavailable, ar_twin_name
from .run import Run
from .scheduler import MAX_BATCH, DecodeScheduler, Job, SchedulerTurn, batching_from_env
from .settings import DecodeRequest, DecodeSettings
from .streaming import DEVICE, Lane, StopFlag, StopFlags
from .warming import shapes_for

log = logging.getLogger(__name__)
LOAD_GRACE = 5.0  # seconds a request waits for its model's load before it is told the load's progress instead


class ModelLoading(ModelUnavailable):
    """The model is still loading (a download, say): the request is answered with its progress, not held."""


@dataclass
class Studio:
    """`registry` holds the models on the first device; `replicas` one more registry per further GPU (a copy of each
    model there, loaded in the background once the first copy is ready): a request goes to the device whose
    scheduler has the fewest rows waiting or decoding. The race and the warm-up use the first device."""

    registry: ModelRegistry = field(default_factory=ModelRegistry)
    stops: StopFlags = field(default_factory=StopFlags)
    max_batch: int = MAX_BATCH
    budgets: Budgets = field(default_factory=Budgets.from_env)
    schedulers: dict[str, DecodeScheduler] = field(default_factory=dict)
    replicas: list[ModelRegistry] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def arm_stop(self, request) -> StopFlag:
        """A fresh stop flag for a new run of the session that sent `request` (it names the visitor too)."""
        return self.stops.arm(getattr(request, "session_hash", None), visitor_of(request))

    def stop(self, request: gr.Request) -> None:
        """Stop this session's decode at its next step (what it committed so far is kept)."""
        self.stops.trigger(getattr(request, "session_hash", None))

    def lane(self, req: DecodeRequest, messages: list[dict]) -> tuple[Lane, list[str]]:
        """The race lane that answers `messages` as `req` asks, and the notes the user should read about it."""
        loaded, settings, ids, notes = self.prepare(req, messages)
        return Lane(loaded, ids, settings), notes

    def start(self, req: DecodeRequest, messages: list[dict], stop: threading.Event, title: str = "") -> Run:
        """Queue the decode that answers `messages` on the model's scheduler; the Run a handler follows."""
        loaded, settings, ids, notes = self.prepare(req, messages)
        cost, budget = settings.forwards_bound(len(ids)), self.budgets.chat
        if cost > budget:
            raise OverBudget(
                f"this request may take up to {cost:,} forwards ({settings.max_new_tokens} new tokens, "
                f"block {settings.block_length}, {settings.steps} steps); a request may take at most "
                f"{budget:,} here: lower max new tokens or the steps per block"
            )
        params = settings.params(stop_token_ids=loaded.stop_token_ids)
        job = self.scheduler(loaded).submit(
            Job(
                loaded,
                ids,
                params.resolved(loaded.config),
                stop=stop,
                visitor=getattr(stop, "visitor", ""),
                budget=budget,
            )
        )
        run = Run(job, notes, title=title)
        run.feed.pace_ms = req.pace_ms
        return run

    def ready(self, name) -> LoadedModel:
        """The model, loaded: a load that ends within LOAD_GRACE seconds is waited for (the embedded models load in
        about a second); a longer one (a download) is not: the visitor is told its progress at once, and the
        request holds nothing while it runs."""
        status = self.registry.ready_or_status(name)
        if isinstance(status, LoadStatus):
            loading = self.registry.loading(name)  # None: it ended since (a failure is then raised below)
            if loading is None or loading.done.wait(LOAD_GRACE):
                status = self.registry.ready_or_status(name)
        if isinstance(status, LoadStatus):
            raise ModelLoading(f"{status.message()}. Send again once it is ready (Load shows its progress).")
        return self.least_loaded(name, status)

    def least_loaded(self, name, first: LoadedModel) -> LoadedModel:
        """The copy of `name` whose device has the least work (`first` when there are no replicas, or on a tie); a
        replica that holds no copy yet starts loading one and is left out until it has it."""
        copies = [first]
        for registry in self.replicas:
            copy = registry.cached(name)
            if copy is None:
                registry.start(name)
            else:
                copies.append(copy)
        return min(copies, key=lambda m: self.scheduler(m).load)  # min keeps the first of equals

    def turn(self, loaded: LoadedModel, stop: threading.Event) -> SchedulerTurn:
        """Timed decodes' turns on the device of `loaded` (the race, the sweep), queued as the visitor of `stop`."""
        return SchedulerTurn(self.scheduler(loaded), getattr(stop, "visitor", ""))

    def scheduler(self, loaded: LoadedModel) -> DecodeScheduler:
        """The scheduler of the device the model is on (one per device, made on first use). The first device's
        takes the studio's device lock (streaming.DEVICE, shared with the race and the warm-up); each further
        GPU's has its own, so that the devices decode at the same time."""
        name = str(loaded.model.device)
        with self._lock:
            if name not in self.schedulers:
                lock = DEVICE if not self.schedulers else threading.Lock()
                join, width = batching_from_env()
                self.schedulers[name] = DecodeScheduler(
                    name, max_batch=self.max_batch, lock=lock, join=join, width=width
                )
            return self.schedulers[name]

    def prepare(
        self, req: DecodeRequest, messages: list[dict]
    ) -> tuple[LoadedModel, DecodeSettings, list[int], list[str]]:
        """The model, the settings it decodes with (SDAR settings turned into AR ones on an AR model), the prompt
        ids, and the notes the user should read."""
        loaded = self.ready(req.model_name)
        settings, notes = req.settings, []
        if not loaded.is_sdar:  # the page greys the SDAR controls out for it (ui.controls_for_model): no note
            settings = settings.as_ar()
        elif settings.strategy != "ar" and settings.block_length not in loaded.config.trained_blocks:
            notes.append(untrained_block_note(loaded.display_name, loaded.config, settings.block_length))
        ids, note = prompt_ids(loaded.tokenizer, messages)
        return loaded, settings, ids, notes + ([note] if note else [])


def replica_registries(registry: ModelRegistry, gpus: int | None = None) -> list[ModelRegistry]:
    """One registry per GPU after the first (`gpus`: torch.cuda.device_count() by default), each loading its own
    copy of a model onto its GPU, with the first registry's folder, allow-list and limits. SDAR_REPLICAS=0 turns them
    off (one GPU serves, the others stay free for something else)."""
    if os.environ.get("SDAR_REPLICAS", "1") == "0":
        return []
    gpus = torch.cuda.device_count() if gpus is None else gpus
    if gpus < 2 or registry.device not in (None, "cuda", "cuda:0"):
        return []
    return [registry.copy_for(f"cuda:{i}") for i in range(1, gpus)]


def ar_note(name: str) -> str:
    return (
        f"{name} is autoregressive: it decodes one token per forward, so block length, steps, strategy and "
        "threshold do not apply."
    )


def untrained_block_note(name: str, config, block: int) -> str:
    sizes = config.trained_blocks
    listed = ", ".join(map(str, sizes))
    return (
        f"{name} was trained at block size{'s' if len(sizes) > 1 else ''} {listed}; block {block} was not "
        "trained for: expect worse answers."
    )


@dataclass
class Warmup:
    """The GPU warm-up at start (sdar_core.warmup): the start model's shapes for every trained block size (static
    and dynamic) and the race's AR lane, and its AR twin's, decoded once in the background so that the first visitor
    does not pay graph capture and kernel compilation. It takes the device one shape at a time, so a visitor who
    comes early is served after one shape at most (the scheduler takes the same lock), and it logs a line per
    shape."""

    done: int = 0
    total: int = 0
    running: bool = False

    def note(self) -> str:
        if not self.running:
            return ""
        return f"GPU warm-up: {self.done} of {self.total or '…'} decode shapes ready."

    def start(self, registry: ModelRegistry, name: str, settings: DecodeSettings | None = None) -> bool:
        """Warm `name` (already loaded) and its AR twin in a background thread, for `settings` (the page's defaults
        when None); False when there is nothing to warm (not loaded, or on the CPU)."""
        settings = settings if settings is not None else DecodeSettings()
        m = registry.cached(name)
        if m is None or not needs_warm_up(m.model):
            return False
        self.running = True
        threading.Thread(
            target=self._run, args=(registry, name, settings), daemon=True, name="sdar-warmup"
        ).start()
        return True

    def _run(self, registry: ModelRegistry, name: str, settings: DecodeSettings) -> None:
        t0 = time.perf_counter()
        try:
            twin = ar_twin_name(name)
            plan = [
                (m, p, shape)
                for m in [registry.get(name)] + ([registry.get(twin)] if twin else [])
                for p, shape in self._shapes(m, settings)
            ]
            self.total = len(plan)
            for i, (m, params, shape) in enumerate(plan):
                filler = (m.tokenizer.encode("a", add_special_tokens=False) or [0])[0]
                with DEVICE:
                    seconds = warm_up(m.model, params, shape, filler)
                self.done += 1
                log.info(
                    "GPU warm-up %d/%d: %s, %s, %s: %.2f s",
                    i + 1,
                    len(plan),
                    m.display_name,
                    params.strategy,
                    shape,
                    seconds,
                )
        except Exception:  # a failed warm-up costs the first visitor its capture time, nothing else
            log.exception("GPU warm-up failed")
        finally:  # logged before `running` drops, so that whoever waits for the end finds the line
            log.info("GPU warm-up done in %.1f s", time.perf_counter() - t0)
            self.running = False

    @staticmethod
    def _shapes(m: LoadedModel, settings: DecodeSettings) -> list[tuple[DecodeParams, object]]:
        """shapes_for the model's config, when its decodes capture graphs (CUDA)."""
        return shapes_for(m.config, settings) if needs_warm_up(m.model) else []


WARMUP = Warmup()
