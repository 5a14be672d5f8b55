"""The models the studio can use: found under assets/models/, typed as a path or a hub id, loaded lazily
in the background and kept in a small thread-safe LRU cache (one device, a couple of models at most in memory).

Who may load what: the shipped models (the registry's models_dir, by the names `available()` lists) and CURATED
hub ids always; any other folder or hub id only for a private request (app/exposure.py: loopback, no proxy, a
server not exposed) or when the operator allows any model (--allow-any-model). Every other name gets one refusal,
whatever it resolves to: a visitor learns nothing about the server's paths.

A load runs in its own thread, outside the registry's lock: looking a model up never waits behind a download. A
hub download runs in a child process (app/downloads.py) with a deadline and a minimum rate, killed when it breaks
either; `ready_or_status` answers at once with the model or the load's progress, so no handler waits for a load."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from sdar_core import CheckpointError, ConfigError, load_pretrained, stop_ids_for
from sdar_core.config import ModelConfig
from sdar_core.device import default_device, default_dtype
from sdar_core.loading import checkpoint_key, free_bytes, model_card
from sdar_core.paths import MODELS_DIR, REPO
from sdar_core.template_sandbox import SANDBOX

from . import exposure
from .catalog import NAMES, ModelSpec, gigabytes, spec_for
from .downloads import DownloadLimits, download

DEFAULT_MODEL = "assets/models/sdar-tiny"
CURATED = NAMES  # the SDAR family and their AR peers (app/catalog.py)
MAX_NAME_CHARS = 300
HUB_HOST = ("huggingface.co", 443)
ONLINE_TTL = 60.0  # seconds a network probe's answer is reused
LOAD_WAIT = (
    900.0  # seconds get() waits for a load (a download has its own deadline: DownloadLimits) before giving up
)
FAILURE_SHOWN = 15.0  # seconds ready_or_status reports a failed load before the next call starts a fresh one


def checkpoint_summary(model) -> dict:
    """What the model card shows about a loaded model (render.model_markdown)."""
    c = model.config
    return {
        "model_type": c.model_type,
        "parameters": c.num_parameters(),
        "layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "block_size": c.block_size,
        "mask_token_id": c.mask_token_id,
        "experts": c.num_experts,
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        "weights": model.weights,  # "fp8" under the operator's --weights fp8, else the dtype's name
    }


class ModelUnavailable(ValueError):
    """A model name that does not lead to a loadable checkpoint, with what to do about it."""


@dataclass
class LoadedModel:
    name: str  # as the user picked or typed it
    path: str  # resolved local folder, or the hub id
    model: object
    tokenizer: object
    summary: dict = field(default_factory=dict)

    @property
    def display_name(self) -> str:
        """The folder's own name for a local checkpoint, the hub id otherwise."""
        p = Path(self.path)
        return p.name if p.is_dir() else self.name

    @property
    def config(self):
        return self.model.config

    @property
    def is_sdar(self) -> bool:
        return self.config.is_sdar

    @property
    def context(self) -> int:
        return self.config.max_position_embeddings

    @cached_property
    def stop_token_ids(self) -> list[int]:
        """The tokenizer's eos, <|im_end|>, <|endoftext|> and the config's eos ids that exist in the vocab."""
        return stop_ids_for(self.tokenizer, self.config)

    @cached_property
    def stop_token_names(self) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(self.stop_token_ids)

    def event_pieces(self, e) -> dict[int, str]:
        """The printed text of every token a step event shows: its block and the masked positions' best guesses."""
        return self.pieces(set(e.block_state) | set(e.candidates.values()))

    def pieces(self, ids) -> dict[int, str]:
        """Token id -> printed text, for the ids given (decoded one by one, special tokens kept)."""
        out = {}
        for i in set(int(t) for t in ids):
            if i in self._piece_cache:
                out[i] = self._piece_cache[i]
                continue
            text = self.tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            self._piece_cache[i] = out[i] = text
        return out

    @cached_property
    def _piece_cache(self) -> dict[int, str]:
        return {}


def checked_name(name) -> str:
    """The model name stripped, or ModelUnavailable saying what a name must be."""
    if name is None or (isinstance(name, str) and not name.strip()):
        raise ModelUnavailable("no model chosen: pick one from the list or type a folder path or a hub id")
    if not isinstance(name, str):
        raise ModelUnavailable(f"model name must be text, got {type(name).__name__}")
    if len(name) > MAX_NAME_CHARS:
        raise ModelUnavailable(
            f"model name is {len(name):,} characters long; at most {MAX_NAME_CHARS} are accepted"
        )
    if not name.isprintable():
        raise ModelUnavailable("model name must be printable text (no control characters or lone surrogates)")
    return name.strip()


def resolve_name(name: str) -> str:
    """A name relative to the repository (assets/models/x) when it exists there, else the name as typed."""
    name = checked_name(name)
    p = Path(name).expanduser()
    if not p.is_absolute() and not _exists(p) and _exists(REPO / p):
        return str(REPO / p)
    return str(p) if _exists(p) else name


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def default_missing(name) -> bool:
    """True when `name` is the embedded default model and its folder is not there (not trained or not shipped)."""
    return isinstance(name, str) and name.strip() == DEFAULT_MODEL and not _exists(Path(resolve_name(name)))


def missing_default_message(name: str = DEFAULT_MODEL) -> str:
    return (
        f"The embedded model `{name}` is not here yet (our training pipeline writes it). Type the path of a "
        "local SDAR or Qwen3 checkpoint folder, or a Hugging Face hub id such as `JetLM/SDAR-1.7B-Chat`, in "
        "the model box."
    )


def looks_like_path(name: str) -> bool:
    """A name that can only be a local folder (absolute, relative with ./ ../ ~, or not of the form org/name)."""
    return name.startswith(("/", ".", "~")) or name.count("/") != 1


def missing_folder_message(name: str) -> str:
    return (
        f"no checkpoint folder at {name!r} on this machine (a local path: no folder there holds config.json "
        "and safetensors weights)"
    )


def hub_cache_folder(hub_id: str, cache: Path | None = None) -> Path:
    """huggingface_hub's cache folder of a model repository (models--org--name)."""
    if cache is None:
        from huggingface_hub import constants

        cache = Path(constants.HF_HUB_CACHE)
    return Path(cache) / ("models--" + hub_id.replace("/", "--"))


def downloaded_bytes(hub_id: str, cache: Path | None = None) -> int:
    """Bytes of the repository in the local hub cache so far (finished files and those still downloading)."""
    blobs = hub_cache_folder(hub_id, cache) / "blobs"
    try:
        return sum(f.stat().st_size for f in blobs.iterdir() if f.is_file())
    except OSError:
        return 0


def in_hub_cache(hub_id: str, cache: Path | None = None) -> bool:
    """Whether a full snapshot (config and weights) of the repository is in the local hub cache."""
    snapshots = hub_cache_folder(hub_id, cache) / "snapshots"
    try:
        return any(
            (s / "config.json").is_file() and any(s.glob("*.safetensors")) for s in snapshots.iterdir()
        )
    except OSError:
        return False


def hub_reachable(timeout: float = 1.5) -> bool:
    """Whether the hub can be reached: never with HF_HUB_OFFLINE, else a TCP connection to it within `timeout`."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def ar_twin_name(name: str) -> str | None:
    """The AR twin of an SDAR folder when it exists next to it: `sdar-X` -> `ar-X` (e.g. sdar-tiny, ar-tiny)."""
    p = Path(resolve_name(name)) if name else None
    if p is None or not p.is_dir() or not p.name.startswith("sdar-"):
        return None
    twin = p.with_name("ar-" + p.name[len("sdar-") :])
    return str(twin) if (twin / "config.json").is_file() else None


@dataclass
class Loading:
    """One model's load in flight (or done): every request for that model waits on the same one."""

    name: str
    started: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    result: LoadedModel | None = None
    error: BaseException | None = None
    phase: str = "loading"  # "downloading" while a hub download runs, then "loading" (the weights, from disk)
    downloaded: int | None = None  # bytes of the download on disk so far (hub ids)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    def outcome(self) -> LoadedModel:
        """The loaded model, or the load's error raised (call once `done` is set)."""
        if self.error is not None:
            raise self.error
        return self.result


@dataclass(frozen=True)
class LoadStatus:
    """A load still running, as ready_or_status reports it: what to tell the visitor instead of waiting."""

    name: str
    phase: str  # "downloading" | "loading"
    elapsed: float  # seconds since the load started
    downloaded: int | None = None  # bytes on disk so far (a hub download), None when nothing is downloaded
    expected: int | None = None  # bytes the download should reach (catalog models), None when unknown

    def message(self) -> str:
        """One line, e.g. 'JetLM/SDAR-4B-Chat is downloading: 1.2 GB of about 8.8 GB, 40 s'."""
        done = ""
        if self.downloaded is not None:
            done = f": {gigabytes(self.downloaded)}" + (
                f" of about {gigabytes(self.expected)}" if self.expected else ""
            )
        return f"{self.name} is {self.phase}{done}, {self.elapsed:.0f} s so far"


class ModelRegistry:
    """Load-once cache of (model, tokenizer), safe to share between Gradio's worker threads. The lock guards
    the cache and the loads in flight only; the loading itself runs in a thread of its own."""

    def __init__(
        self,
        models_dir: Path | str = MODELS_DIR,
        capacity: int = 3,
        device=None,
        dtype=None,
        *,
        allow_any_model: bool = False,
        exposed: bool = True,
        offered: tuple[str, ...] = (),
        online=hub_reachable,
        free_memory=None,
        hub_cache: Path | None = None,
        limits: DownloadLimits | None = None,
        weights: str | None = None,
    ) -> None:
        """allow_any_model: the operator's --allow-any-model (every request may load anything). exposed: the server
        is reachable beyond this machine (bind address, share link, Space); a request is judged by itself too.
        limits: when a hub download is abandoned (default: DownloadLimits.from_env()). weights: the operator's
        --weights ("fp8": every model loads with float8 projections, load_pretrained's weights="fp8")."""
        self.models_dir = Path(models_dir)
        self.capacity = capacity
        self.device, self.dtype, self.weights = device, dtype, weights
        self.allow_any_model, self.exposed = allow_any_model, exposed
        self.limits = limits or DownloadLimits.from_env()
        self._online, self._online_at = online, (None, -ONLINE_TTL)  # probe, (its last answer, when)
        self._free_memory = free_memory or (lambda: free_bytes(self.target_device))  # bytes, None if unknown
        self.hub_cache = hub_cache
        self.offered = frozenset(
            CURATED + tuple(offered)
        )  # beyond models_dir: the curated ids, the operator's own
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, Loading] = {}
        self._failed: dict[
            str, tuple[float, BaseException]
        ] = {}  # key -> (when, why) of its last failed load
        self._lock = threading.Lock()

    def copy_for(self, device: str) -> ModelRegistry:
        """A registry like this one (folder, allow-list, limits, capacity) that loads its models onto `device`: a
        replica of the studio's models on another GPU."""
        twin = ModelRegistry(
            self.models_dir,
            self.capacity,
            device,
            self.dtype,
            allow_any_model=self.allow_any_model,
            exposed=self.exposed,
            online=self._online,
            hub_cache=self.hub_cache,
            limits=self.limits,
            weights=self.weights,
        )
        twin.offered = self.offered
        return twin

    def available(self) -> list[str]:
        """The checkpoint folders under models_dir, as names relative to the repository when possible."""
        if not self.models_dir.is_dir():
            return []
        found = sorted(p for p in self.models_dir.iterdir() if (p / "config.json").is_file())
        out = []
        for p in found:
            try:
                out.append(str(p.resolve().relative_to(REPO)))
            except ValueError:
                out.append(str(p))
        return out

    @property
    def target_device(self) -> torch.device:
        return torch.device(self.device) if self.device is not None else default_device()

    @property
    def target_dtype(self) -> torch.dtype:
        return self.dtype or default_dtype(self.target_device)

    def online(self) -> bool:
        """Whether the hub can be reached (probed at most every ONLINE_TTL seconds)."""
        answer, at = self._online_at
        if answer is None or time.monotonic() - at > ONLINE_TTL:
            answer = self._online()
            self._online_at = answer, time.monotonic()
        return answer

    def unavailable(self, spec: ModelSpec) -> str | None:
        """Why a catalog model cannot be loaded here (too little memory, no network and not cached), or None."""
        dtype, device = self.target_dtype, self.target_device
        need, free = spec.memory_bytes(dtype.itemsize), self._free_memory()
        if free is not None and need > free:
            where = f"{device.type.upper()} memory" + (" (no GPU here)" if device.type == "cpu" else "")
            return (
                f"{spec.name} needs about {gigabytes(need)} in {str(dtype).removeprefix('torch.')} and this "
                f"machine has {gigabytes(free)} of {where} free: pick a smaller model"
            )
        if not in_hub_cache(spec.name, self.hub_cache) and not self.online():
            return (
                f"{spec.name} is not in this machine's model cache and the hub cannot be reached (no network): "
                f"its {gigabytes(spec.download_bytes)} cannot be downloaded here"
            )
        return None

    def availability(self, spec: ModelSpec) -> str:
        """One line: why it cannot be loaded, or what loading it costs."""
        reason = self.unavailable(spec)
        if reason:
            return "⚠️ " + reason[0].upper() + reason[1:] + "."
        if in_hub_cache(spec.name, self.hub_cache):
            return "✓ In the local model cache: loads on first use (or press *Load*)."
        return f"✓ Downloads {gigabytes(spec.download_bytes)} on first use (or press *Load*)."

    def progress(self, loading: Loading) -> str:
        """How far a load got: the download's bytes so far for a catalog model, '' otherwise."""
        spec = spec_for(loading.name)
        if spec is None:
            return ""
        got = min(downloaded_bytes(spec.name, self.hub_cache), spec.download_bytes)
        return f"downloaded {gigabytes(got)} of about {gigabytes(spec.download_bytes)}"

    def peek_config(self, name, *, public: bool | None = None):
        """The ModelConfig of `name` without loading weights: the loaded model's, an allowed local folder's
        config.json, or the catalog's shape; None when unknown (a hub id not in the catalog, a refused name)."""
        try:
            key = self.key(name, public=public)
        except ModelUnavailable:
            return None
        with self._lock:
            if key in self._cache:
                return self._cache[key].config
        spec = spec_for(name)
        if spec is not None:
            return spec.config
        try:
            return ModelConfig.from_json(Path(key) / "config.json") if Path(key).is_dir() else None
        except (ConfigError, OSError, ValueError):
            return None

    def allows_any(self, public: bool | None = None) -> bool:
        """Whether a request may load any folder or hub id: the operator said so, or the request is private.
        public: the request's verdict (app/exposure.py); None judges the gradio request this thread handles, or
        outside a handler the server's exposure."""
        if self.allow_any_model:
            return True
        if public is None:
            public = exposure.current_verdict(server_exposed=self.exposed)
        return not public

    def refusal(self, name: str) -> ModelUnavailable:
        """The one refusal for a name a public request may not load, whatever the name resolves to."""
        offered = ", ".join(["the models in the list", *CURATED])
        return ModelUnavailable(
            f"model {name!r} is not offered by this studio: pick one of {offered} (the person "
            "running the studio can allow any folder or hub id with --allow-any-model)"
        )

    def key(self, name, public: bool | None = None) -> str:
        """The cache key of `name` (its real folder, or the hub id), or ModelUnavailable when it may not be loaded
        here. A public request (see allows_any) may load the names `available()` lists and the offered ids, spelled
        as listed; any other name gets refusal(), the same message whatever exists at that path."""
        name = checked_name(name)
        if default_missing(name):
            raise ModelUnavailable(missing_default_message())
        if not self.allows_any(public) and name not in self.offered and name not in self.available():
            raise self.refusal(name)
        try:
            return checkpoint_key(resolve_name(name))
        except CheckpointError as e:
            if looks_like_path(name):
                raise ModelUnavailable(
                    f"cannot load model {name!r}: {missing_folder_message(name)}"
                ) from None
            raise ModelUnavailable(f"cannot load model {name!r}: {e}") from None

    def get(
        self,
        name,
        stop: threading.Event | None = None,
        timeout: float = LOAD_WAIT,
        *,
        public: bool | None = None,
    ) -> LoadedModel:
        """The loaded model for `name` (a folder or a hub id), loading it on first use; waits at most `timeout`
        seconds, and stops waiting when `stop` is set (the load itself goes on, for the next request).
        Blocking: a handler that holds a decode slot calls ready_or_status instead."""
        loading = self.start(name, public=public)
        while not loading.done.wait(0.2):
            if stop is not None and stop.is_set():
                raise ModelUnavailable(
                    f"stopped waiting for {loading.name!r}: it keeps loading in the background"
                )
            if loading.seconds > timeout:
                raise ModelUnavailable(
                    f"{loading.name!r} is still loading after {loading.seconds:.0f} s; try again later"
                )
        return loading.outcome()

    def ready_or_status(self, name, *, public: bool | None = None) -> LoadedModel | LoadStatus:
        """At once: the loaded model, or the status of its load (started now in the background if none runs).
        ModelUnavailable when `name` may not be loaded here, or when its last load failed or was abandoned less
        than FAILURE_SHOWN seconds ago (the reason; after that window a call starts a fresh load)."""
        key = self.key(name, public=public)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            failed = self._failed.get(key) if key not in self._loading else None
        if failed is not None and time.monotonic() - failed[0] < FAILURE_SHOWN:
            raise ModelUnavailable(f"{failed[1]} (try again in a moment for a fresh start)") from None
        loading = self.start(name, public=public)
        if loading.done.is_set():
            return loading.outcome()
        spec = spec_for(loading.name)
        return LoadStatus(
            name=loading.name,
            phase=loading.phase,
            elapsed=loading.seconds,
            downloaded=loading.downloaded,
            expected=spec.download_bytes if spec else None,
        )

    def start(self, name, *, public: bool | None = None) -> Loading:
        """The load of `name`: already done when it is cached, else the one in flight or a new one."""
        key = self.key(name, public=public)
        spec = spec_for(name)
        with self._lock:
            known = key in self._cache or key in self._loading
        reason = (
            self.unavailable(spec) if spec is not None and not known else None
        )  # probes: outside the lock
        if reason:  # refused before a byte is downloaded
            raise ModelUnavailable(reason)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                done = Loading(name=self._cache[key].name, result=self._cache[key])
                done.done.set()
                return done
            loading = self._loading.get(key)
            if loading is None:
                self._failed.pop(key, None)
                phase = "loading" if Path(key).is_absolute() else "downloading"  # a local folder, a hub id
                loading = self._loading[key] = Loading(name=name.strip(), phase=phase)
                threading.Thread(
                    target=self._load, args=(key, loading), daemon=True, name="sdar-load"
                ).start()
            return loading

    def loading(self, name, *, public: bool | None = None) -> Loading | None:
        """The load of `name` in flight, if any (never starts one)."""
        try:
            key = self.key(name, public=public)
        except ModelUnavailable:
            return None
        with self._lock:
            return self._loading.get(key)

    def _load(self, key: str, loading: Loading) -> None:
        try:
            folder = (
                key if Path(key).is_absolute() else self._download(key, loading)
            )  # checkpoint_key: real folder
            loading.phase = "loading"
            loaded = self._build(key, loading.name, folder)
            with self._lock:
                self._cache[key] = loaded
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
            loading.result = loaded
        except BaseException as e:  # handed to every request waiting for this load
            if isinstance(
                e, ModelUnavailable
            ):  # a user's error: its frames would keep what the refused load read
                e = e.with_traceback(None)
            loading.error = e
            with self._lock:
                now = time.monotonic()
                for old in [k for k, (at, _) in self._failed.items() if now - at > FAILURE_SHOWN]:
                    del self._failed[old]  # bounded: only the failures still being shown
                self._failed[key] = (now, e)
        finally:
            with self._lock:
                self._loading.pop(key, None)  # a failed load is forgotten: the next try starts afresh
            loading.done.set()

    def _download(self, hub_id: str, loading: Loading) -> str:
        """The hub snapshot's local folder, fetched in a child process under self.limits."""

        def report(n: int) -> None:
            loading.downloaded = n

        try:
            folder = download(
                hub_id,
                cache=str(self.hub_cache) if self.hub_cache else None,
                limits=self.limits,
                progress=lambda: downloaded_bytes(hub_id, self.hub_cache),
                report=report,
            )
        except (OSError, RuntimeError) as e:  # the child's CheckpointError message, or DownloadAbandoned
            raise ModelUnavailable(f"cannot load model {loading.name!r}: {e}") from None
        return str(folder)

    def _build(self, key: str, name: str, folder: str) -> LoadedModel:
        try:
            model, tokenizer = load_pretrained(
                folder, device=self.device, dtype=self.dtype, weights=self.weights
            )
            card = model_card(folder)
        except (CheckpointError, ConfigError, OSError) as e:
            raise ModelUnavailable(f"cannot load model {name!r}: {e}") from None
        if getattr(tokenizer, "chat_template", None):
            SANDBOX.start()  # its worker imports while the first visitor types
        terms = {k: card[k] for k in ("license", "license_note") if k in card}  # what users may do with it
        return LoadedModel(
            name=name, path=key, model=model, tokenizer=tokenizer, summary=checkpoint_summary(model) | terms
        )

    def cached(self, name, *, public: bool | None = None) -> LoadedModel | None:
        """The model for `name` if it is already loaded (never loads)."""
        try:
            key = self.key(name, public=public)
        except ModelUnavailable:
            return None
        with self._lock:
            return self._cache.get(key)
