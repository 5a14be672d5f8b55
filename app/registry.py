"""The models the studio can use: found under assets/models/, typed as a path or a hub id, loaded lazily
and kept in a small thread-safe LRU cache (one device, a couple of models at most in memory)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from sdar_core import CheckpointError, ConfigError, load_pretrained, stop_ids_for
from sdar_core.loading import model_card
from sdar_core.paths import MODELS_DIR, REPO

DEFAULT_MODEL = "assets/models/sdar-tiny"


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


def resolve_name(name: str) -> str:
    """A name relative to the repository (assets/models/x) when it exists there, else the name as typed."""
    name = (name or "").strip()
    if not name:
        raise ModelUnavailable("no model chosen: pick one from the list or type a folder path or a hub id")
    p = Path(name).expanduser()
    if not p.is_absolute() and not p.exists() and (REPO / p).exists():
        return str(REPO / p)
    return str(p) if p.exists() else name


def default_missing(name: str) -> bool:
    """True when `name` is the embedded default model and its folder is not there (not trained or not shipped)."""
    return (name or "").strip() == DEFAULT_MODEL and not Path(resolve_name(name)).exists()


def missing_default_message(name: str = DEFAULT_MODEL) -> str:
    return (f"The embedded model `{name}` is not here yet (our training pipeline writes it). Type the path of a "
            "local SDAR or Qwen3 checkpoint folder, or a Hugging Face hub id such as `JetLM/SDAR-1.7B-Chat`, in "
            "the model box.")


def ar_twin_name(name: str) -> str | None:
    """The AR twin of an SDAR folder when it exists next to it: `sdar-X` -> `ar-X` (e.g. sdar-tiny, ar-tiny)."""
    p = Path(resolve_name(name)) if name else None
    if p is None or not p.is_dir() or not p.name.startswith("sdar-"):
        return None
    twin = p.with_name("ar-" + p.name[len("sdar-"):])
    return str(twin) if (twin / "config.json").is_file() else None


class ModelRegistry:
    """Load-once cache of (model, tokenizer), safe to share between Gradio's worker threads."""

    def __init__(self, models_dir: Path | str = MODELS_DIR, capacity: int = 3, device=None, dtype=None) -> None:
        self.models_dir = Path(models_dir)
        self.capacity = capacity
        self.device, self.dtype = device, dtype
        self._cache: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

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

    def get(self, name: str) -> LoadedModel:
        """The loaded model for `name` (a folder or a hub id), loading it on first use."""
        key = resolve_name(name)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            if default_missing(name):
                raise ModelUnavailable(missing_default_message())
            try:
                model, tokenizer = load_pretrained(key, device=self.device, dtype=self.dtype)
                card = model_card(key)
            except (CheckpointError, ConfigError, OSError) as e:
                raise ModelUnavailable(f"cannot load model {name!r}: {e}") from None
            terms = {k: card[k] for k in ("license", "license_note") if k in card}  # what users may do with it
            loaded = LoadedModel(name=name.strip(), path=key, model=model, tokenizer=tokenizer,
                                 summary=checkpoint_summary(model) | terms)
            self._cache[key] = loaded
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
            return loaded

    def cached(self, name: str) -> LoadedModel | None:
        """The model for `name` if it is already loaded (never loads)."""
        try:
            key = resolve_name(name)
        except ModelUnavailable:
            return None
        with self._lock:
            return self._cache.get(key)
