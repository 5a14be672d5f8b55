"""load_pretrained / save_pretrained: the files of a public SDAR or Qwen3 checkpoint, and nothing else.

A checkpoint folder holds `config.json`, the weights as `model.safetensors` or as shards listed in
`model.safetensors.index.json`, and the tokenizer files that `transformers.AutoTokenizer` reads. Only
safetensors are read: a pickle (`*.bin`, `*.pt`) can run code when loaded, so we never open one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from .config import ConfigError, ModelConfig
from .device import default_device, default_dtype
from .model import SDARForCausalLM
from .paths import in_checkout

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
MODEL_CARD_NAME = "README.md"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# An index is a name per tensor (Qwen3-235B's: about 2 MB); a larger one is refused before it is parsed.
MAX_INDEX_BYTES = 64 << 20
MAX_SHARDS = 10_000
# Text a checkpoint ships that something here reads whole (the tokenizer's files; Qwen3's tokenizer.json is 11 MB),
# checked before it is read; a chat template is code and renders in sdar_core.template_sandbox.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "chat_template.json",
    "chat_template.jinja",
)
MAX_TOKENIZER_FILE_BYTES = 64 << 20
MAX_TEMPLATE_FILE_BYTES = 1 << 20
MAX_CARD_BYTES = 256 << 10  # the head of README.md that is read: its front matter comes first
SAFETENSORS_FLOATS = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
}
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "tokenizer*", "*.model"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded, with the reason in words."""


def _is_hub_id(name: str) -> bool:
    """`org/name` that names no local path: fetched from the hub."""
    return (
        name.count("/") == 1 and not name.startswith((".", "/", "~")) and not _exists(Path(name).expanduser())
    )


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a NUL byte, a name too long for the file system
        return False


def _not_a_checkpoint(name) -> CheckpointError:
    # One message whether the path is missing, a file, unreadable or a folder without config.json: the error
    # must not tell a visitor which server paths exist.
    name = str(name)
    shown = (
        name
        if name.isprintable() and len(name) <= 200
        else repr(name[:200]) + ("..." if len(name) > 200 else "")
    )
    return CheckpointError(
        f"no checkpoint folder at {shown} (expected a folder holding config.json and "
        "safetensors weights, or a hub id such as JetLM/SDAR-1.7B-Chat)"
    )


def real_checkpoint_folder(path: str | os.PathLike) -> Path:
    """The real path of a local checkpoint folder (`~`, `..`, `//` and symlinks resolved): one key per folder for
    whoever caches loaded models. CheckpointError unless it is a folder holding config.json."""
    try:
        folder = Path(path).expanduser().resolve()
        if folder.is_dir() and (folder / "config.json").is_file():
            return folder
    except (OSError, RuntimeError, ValueError):  # unreadable, a symlink loop, a NUL byte
        pass
    raise _not_a_checkpoint(path)


def checkpoint_key(path_or_hub_id: str | os.PathLike) -> str:
    """What identifies a checkpoint: the real folder of a local one, the id of a hub one (no network)."""
    name = str(path_or_hub_id)
    return name if _is_hub_id(name) else str(real_checkpoint_folder(path_or_hub_id))


def resolve_checkpoint(path_or_hub_id: str | os.PathLike) -> Path:
    """The real path of a local checkpoint folder; a hub id is fetched (safetensors and tokenizer files only). A
    relative path of this checkout (`assets/models/sdar-tiny`) is found from any working directory."""
    name = str(path_or_hub_id)
    if (shipped := in_checkout(name)) != name:
        return real_checkpoint_folder(shipped)
    return _fetch_from_hub(name) if _is_hub_id(name) else real_checkpoint_folder(path_or_hub_id)


def hub_timeout() -> float:
    """Seconds any one hub request may wait: huggingface_hub's HF_HUB_ETAG_TIMEOUT, read at each call."""
    try:
        value = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or 10)
    except ValueError:
        value = 10.0
    return value if 0 < value < 3600 else 10.0


def _fetch_from_hub(repo_id: str) -> Path:
    """Download a hub snapshot with a timeout on every request; without network, a snapshot already in the local
    cache is used, as snapshot_download does."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(
            f"{repo_id!r} is not a local folder, and huggingface_hub is not installed "
            "to fetch it from the hub"
        ) from None
    try:
        return _download_snapshot(repo_id)
    except CheckpointError:
        raise
    except Exception as e:  # offline, a stalled or refusing endpoint, unknown repo, gated repo, ...
        try:
            return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
        except Exception:
            pass
        raise CheckpointError(
            f"{repo_id!r} is not a local folder and could not be fetched from the Hugging Face hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no details'}). "
            "Without network access, download the checkpoint elsewhere and pass its folder."
        ) from None


def _download_snapshot(repo_id: str) -> Path:
    """snapshot_download's listing calls have no timeout, so the file list comes from model_info (timed out).
    Each file's metadata is asked first with the same timeout and no retry: hf_hub_download, after a failed
    metadata request, retries with a 60 s timeout five times, minutes before a stalled endpoint is given up."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.utils import filter_repo_objects

    endpoint, timeout = (
        os.environ.get("HF_ENDPOINT") or None,
        hub_timeout(),
    )  # read per call, as the env may change
    info = HfApi(endpoint=endpoint).model_info(repo_id, timeout=timeout)
    names = list(filter_repo_objects([s.rfilename for s in info.siblings or []], allow_patterns=HUB_PATTERNS))
    if "config.json" not in names:
        raise CheckpointError(f"hub repo {repo_id!r} has no config.json: not a model checkpoint")
    folder = None
    for name in names:
        get_hf_file_metadata(
            hf_hub_url(repo_id, name, revision=info.sha, endpoint=endpoint),
            timeout=timeout,
            endpoint=endpoint,
        )
        path = Path(
            hf_hub_download(repo_id, name, revision=info.sha, endpoint=endpoint, etag_timeout=timeout)
        )
        folder = path.parents[len(Path(name).parts) - 1]  # the snapshot folder
    return folder


def _allowed_roots(folder: Path) -> list[Path]:
    """Where the files of `folder` (a real path) may really live: inside it, and for a hub cache snapshot
    (`models--org--name/snapshots/<rev>`, whose files link to `../../blobs/`) in that repo's blobs."""
    roots = [folder]
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        roots.append(folder.parent.parent / "blobs")
    return roots


def _inside(folder: Path, relative: str) -> Path:
    """`folder / relative`, refused unless it stays inside the checkpoint folder (no absolute path, no `..`,
    no symlink leading out of it)."""
    if (
        not isinstance(relative, str)
        or not relative
        or Path(relative).is_absolute()
        or ".." in Path(relative).parts
    ):
        raise CheckpointError(f"the checkpoint names the file {relative!r}, which is not inside its folder")
    try:
        real = (folder / relative).resolve()
    except (OSError, RuntimeError, ValueError):  # a NUL byte, a symlink loop
        raise CheckpointError(f"the checkpoint names the file {relative!r}, which cannot be opened") from None
    if not any(real.is_relative_to(root) for root in _allowed_roots(folder)):
        raise CheckpointError(
            f"{relative} in the checkpoint folder is a link to a file outside it; "
            "copy the file into the folder instead"
        )
    return folder / relative


def _check_links(folder: Path) -> None:
    try:
        entries = list(folder.iterdir())
    except OSError:
        raise _not_a_checkpoint(folder) from None
    for entry in entries:
        if entry.is_symlink():
            _inside(folder, entry.name)


def _index_files(folder: Path) -> list[Path]:
    index = folder / INDEX_NAME
    try:
        if index.stat().st_size > MAX_INDEX_BYTES:
            raise CheckpointError(
                f"{INDEX_NAME} holds {index.stat().st_size:,} bytes; at most {MAX_INDEX_BYTES:,} are read"
            )
        weight_map = json.loads(index.read_bytes().decode("utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not weight_map:
            raise TypeError(f"weight_map must be a non-empty object, got {type(weight_map).__name__}")
    except (ValueError, KeyError, TypeError, RecursionError) as e:  # ValueError: JSON, UTF-8
        raise CheckpointError(
            f"{INDEX_NAME} is not a valid safetensors index ({type(e).__name__}: {e})"
        ) from None
    names = set(weight_map.values())
    if len(names) > MAX_SHARDS:
        raise CheckpointError(
            f"{INDEX_NAME} names {len(names):,} shard files; at most {MAX_SHARDS:,} are read"
        )
    files = sorted({_inside(folder, f) for f in names})
    missing = [str(f.relative_to(folder)) for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{INDEX_NAME} lists shards that are not in the folder: {', '.join(missing)}")
    return files


def _weight_files(folder: Path) -> list[Path]:
    _check_links(folder)
    if (folder / INDEX_NAME).is_file():
        return _index_files(folder)
    single = folder / WEIGHTS_NAME
    if single.is_file():
        return [single]
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        return shards
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise CheckpointError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}); they can run code when loaded, "
            "so only safetensors are read. Convert them with safetensors first."
        )
    raise CheckpointError(f"no safetensors weights in {folder} (expected {WEIGHTS_NAME} or {INDEX_NAME})")


def _read_headers(files: list[Path], max_tensors: int) -> dict[str, torch.Tensor]:
    """Every tensor of the shards as a meta tensor of its dtype and shape: the safetensors headers only, no data.
    More than `max_tensors` names is refused before they are looked at one by one."""
    from safetensors import SafetensorError, safe_open

    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(f, framework="pt") as shard:
                names = shard.keys()
                if len(state) + len(names) > max_tensors:
                    raise CheckpointError(
                        f"the shards hold {len(state) + len(names):,} or more tensors; at most "
                        f"{max_tensors:,} can belong to the model the config describes"
                    )
                for name in names:
                    part = shard.get_slice(name)
                    state[name] = torch.empty(
                        part.get_shape(), dtype=_torch_dtype(part.get_dtype(), f, name), device="meta"
                    )
        except CheckpointError:
            raise
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"cannot read {f.name}: it is not a valid safetensors file ({e})") from None
    return state


def _torch_dtype(name: str, file: Path, tensor: str) -> torch.dtype:
    dtype = SAFETENSORS_FLOATS.get(name)
    if dtype is None:
        raise CheckpointError(
            f"tensor {tensor} in {file.name} has dtype {name}; weights must be one of "
            f"{', '.join(SAFETENSORS_FLOATS)}"
        )
    return dtype


def _read_state_dict(
    files: list[Path], num_experts: int = 0, device="cpu", dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The shards' tensors on `device` in `dtype`, one shard at a time (host memory holds one shard, not the model),
    with each layer's per-expert tensors stacked as soon as the layer's experts are all read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            shard = load_file(f, device=str(device))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {f.name}: it is not a valid safetensors file ({e})") from None
        state.update((k, v.to(dtype) if dtype else v) for k, v in shard.items())
        del shard
        state = _fuse_experts(state, num_experts, complete_only=True)
    return state


EXPERT_TENSOR = re.compile(r"^(.*\.mlp\.experts\.)(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
STACKED_EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")
EXPERT_KINDS = ("gate_proj", "up_proj", "down_proj")


def _fuse_experts(
    state: dict[str, torch.Tensor], num_experts: int, *, complete_only: bool = False
) -> dict[str, torch.Tensor]:
    """The public checkpoints' per-expert tensors (`mlp.experts.{e}.gate_proj.weight`, ...) stacked into the model's
    `mlp.experts.gate_up_proj` [E, 2I, h] and `mlp.experts.down_proj` [E, h, I]; transformers 5's stacked tensors
    pass as they are. complete_only: leave a layer whose experts are not all there yet as it is (loading shard by
    shard); otherwise a missing expert is an error."""
    out, layers = {}, {}
    for name, t in state.items():
        match = EXPERT_TENSOR.match(name)
        if name.endswith(STACKED_EXPERTS) and (t.dim() != 3 or t.shape[0] != num_experts):
            raise CheckpointError(
                f"tensor {name} has shape {tuple(t.shape)} but the config implies "
                f"[num_experts={num_experts}, ., .]"
            )
        if match and int(match[2]) < num_experts:
            layers.setdefault(match[1], {}).setdefault(match[3], {})[int(match[2])] = t
        else:
            out[name] = t
    for prefix, parts in layers.items():
        missing = [
            f"{prefix}{e}.{kind}.weight"
            for kind in EXPERT_KINDS
            for e in range(num_experts)
            if e not in parts.get(kind, {})
        ]
        if missing and complete_only:
            out.update((f"{prefix}{e}.{kind}.weight", t) for kind, ts in parts.items() for e, t in ts.items())
        elif missing:
            raise CheckpointError(
                f"the checkpoint lacks {len(missing)} expert tensors the config needs, e.g. {missing[:3]}"
            )
        else:
            out.update(
                _stack_experts(
                    prefix, *([parts[kind][e] for e in range(num_experts)] for kind in EXPERT_KINDS)
                )
            )
    return out


def _stack_experts(prefix: str, gate: list, up: list, down: list) -> dict[str, torch.Tensor]:
    try:
        return {
            prefix + "gate_up_proj": torch.stack([torch.cat(pair) for pair in zip(gate, up)]),  # [E, 2I, h]
            prefix + "down_proj": torch.stack(down),
        }  # [E, h, I]
    except RuntimeError:
        shapes = sorted({tuple(t.shape) for t in gate + up + down})
        raise CheckpointError(
            f"the experts of {prefix.removesuffix('.experts.')} have tensors of different "
            f"shapes: {shapes[:4]}"
        ) from None


def check_state(model: SDARForCausalLM, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with per-expert tensors stacked and a tied lm_head dropped, after checking that its names and shapes are
    exactly the model's (`state` may hold meta tensors: nothing is read)."""
    state = _fuse_experts(state, model.config.num_experts)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        state.pop("lm_head.weight", None)
    ignored = {k for k in state if k.endswith("rotary_emb.inv_freq")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - ignored)
    if missing:
        raise CheckpointError(
            f"the checkpoint lacks {len(missing)} tensors the config needs, e.g. {missing[:3]}"
        )
    if unexpected:
        raise CheckpointError(
            f"the checkpoint has {len(unexpected)} tensors the config does not describe, "
            f"e.g. {unexpected[:3]}"
        )
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            raise CheckpointError(
                f"tensor {name} has shape {tuple(state[name].shape)} but the config implies {tuple(shape)}"
            )
    return {k: state[k] for k in expected}


def empty_model(config: ModelConfig) -> SDARForCausalLM:
    """The model with every parameter and buffer on the meta device (no memory, no random init), for load_state.

    Built under `torch.device("meta")`, which holds for this thread only. accelerate's `init_empty_weights` patches
    `nn.Module.register_parameter` for the whole process instead: a model built on another thread meanwhile got meta
    parameters, and two loads on two threads (the studio loads in the background) could leave the patch installed
    for good, after which every new module of the process was empty.

    The modules' `torch.nn.init` calls are skipped (`_NoInit`, thread-local too): a meta tensor has no values, and
    the meta form of `normal_` runs through torch._refs, whose first call imports torch._dynamo and sympy, over a
    second of a cold start's critical path (the server's load, each precompile worker's stand-in)."""
    with torch.device("meta"), _NoInit():
        return SDARForCausalLM(config)


class _NoInit(torch.overrides.TorchFunctionMode):
    """While active (on this thread), every `torch.nn.init` function returns its tensor untouched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


def load_state(model: SDARForCausalLM, state: dict[str, torch.Tensor], *, device, dtype) -> None:
    """Put `state` into `model` (possibly on the meta device), checking every name and shape."""
    state = check_state(model, state)
    params = {k: t.to(device=device, dtype=dtype) for k, t in state.items()}
    tied = model.config.tie_word_embeddings
    model.load_state_dict(params, strict=not tied, assign=True)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.reset_rope(device)


def free_bytes(device: torch.device) -> int | None:
    """Memory free for new weights on `device`: CUDA's free memory, available RAM on CPU; None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        import psutil  # accelerate's own dependency

        return psutil.virtual_memory().available
    return None


def check_fits(
    config: ModelConfig, device: torch.device, dtype: torch.dtype, *, spread: bool = False
) -> None:
    """Refuse, before any layer is built, a config whose weights alone exceed the memory free on `device`
    (`spread`: on every GPU and the CPU together, as accelerate's device_map may use them all)."""
    devices = (
        [torch.device("cuda", i) for i in range(torch.cuda.device_count())] + [torch.device("cpu")]
        if spread
        else [device]
    )
    free = [free_bytes(d) for d in devices]
    if any(f is None for f in free):
        return
    need = config.num_parameters() * dtype.itemsize
    if need > sum(free):
        raise ConfigError(
            f"the config implies {config.num_parameters():,} parameters (num_hidden_layers "
            f"{config.num_hidden_layers}, hidden_size {config.hidden_size}, intermediate_size "
            f"{config.intermediate_size}, num_experts {config.num_experts}, vocab_size {config.vocab_size}): "
            f"{need:,} bytes ({need / 2**30:.1f} GiB) of {str(dtype).removeprefix('torch.')} weights, but only "
            f"{sum(free):,} bytes ({sum(free) / 2**30:.1f} GiB) are free on {'the GPUs and CPU' if spread else device}"
        )


def check_tokenizer_files(folder: Path) -> None:
    """Refuse, before transformers reads them whole, tokenizer files larger than any real one."""
    templates = folder / "additional_chat_templates"
    files = [folder / name for name in TOKENIZER_FILES] + (
        sorted(templates.glob("*.jinja")) if templates.is_dir() else []
    )
    for f in files:
        try:
            size = f.stat().st_size
        except OSError:  # absent
            continue
        cap = (
            MAX_TEMPLATE_FILE_BYTES
            if f.name.startswith("chat_template") or f.parent == templates
            else MAX_TOKENIZER_FILE_BYTES
        )
        if size > cap:
            raise CheckpointError(f"{f.relative_to(folder)} holds {size:,} bytes; at most {cap:,} are read")


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    check_tokenizer_files(folder)

    # AutoTokenizer peeks at config.json and warns that it does not know model_type "sdar": noise here.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as e:
        raise CheckpointError(f"cannot load the tokenizer in {folder}: {type(e).__name__}: {e}") from None
    finally:
        hf_logging.set_verbosity(level)


WEIGHT_FORMATS = (None, "fp8")  # load_pretrained's `weights`
WEIGHT_CHOICES = ("dtype", "fp8")  # the command lines' --weights: "dtype" is load_pretrained's weights=None


def weights_from_choice(choice: str) -> str | None:
    """load_pretrained's `weights` for a command line's --weights choice (WEIGHT_CHOICES)."""
    return None if choice == "dtype" else choice


def load_pretrained(
    path_or_hub_id, device=None, dtype=None, *, device_map=None, with_tokenizer: bool = True, weights=None
):
    """Load (model, tokenizer) from a checkpoint folder or a hub id.

    device: default CUDA when there is one, else CPU; dtype: default bfloat16 on CUDA, float32 on CPU.
    weights: None keeps the projections in `dtype`; "fp8" stores them (and the lm_head) as float8 e4m3 with a scale
    per output row, for inference (SDARForCausalLM.quantize_fp8: half the bytes a decode step reads on CUDA; the
    activations stay in `dtype`).
    device_map: "auto" (or an accelerate device map) spreads the layers over the visible GPUs with
    accelerate's big-model loading, for checkpoints that do not fit one device.
    The mask token comes from config `mask_token_id`, else from the tokenizer's mask token; it is stored
    in `model.config.mask_token_id`.

    A refused checkpoint leaves nothing behind: its error carries no traceback (whose frames would keep what was
    read, e.g. a header's million tensor names), and the memory used to read it goes back to the system.
    """
    try:
        return _load_pretrained(path_or_hub_id, device, dtype, device_map, with_tokenizer, weights)
    except (CheckpointError, ConfigError) as e:
        error = e.with_traceback(None)
        error.__context__ = (
            None  # suppressed already (`from None`), but its traceback would keep the frames too
        )
    _return_freed_memory()
    raise error


def _return_freed_memory() -> None:
    """Collect, then hand the heap's free pages back to the system: glibc keeps freed memory in its arenas, so a
    parsed and dropped header of a million tensors once kept ~600 MB of the process's RSS."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def _load_pretrained(path_or_hub_id, device, dtype, device_map, with_tokenizer: bool, weights):
    if not isinstance(path_or_hub_id, (str, os.PathLike)):
        raise CheckpointError(
            f"a checkpoint is a folder path or a hub id (text), got {type(path_or_hub_id).__name__}"
        )
    if weights not in WEIGHT_FORMATS:
        raise CheckpointError(f"weights={weights!r}: use None (the dtype's own) or 'fp8'")
    if weights == "fp8" and device_map is not None:
        raise CheckpointError(
            "weights='fp8' quantizes a model on one device: drop device_map, or load in bf16"
        )
    folder = resolve_checkpoint(path_or_hub_id)
    _check_links(folder)
    config = ModelConfig.from_json(folder / "config.json")
    device = _as_device(device)
    dtype = _as_dtype(dtype, device)
    check_fits(config, device, dtype, spread=device_map is not None)
    files = _weight_files(folder)
    tokenizer = load_tokenizer(folder) if with_tokenizer else None
    _set_mask_token(config, tokenizer, folder)
    model = empty_model(config)  # parameters on the meta device: nothing is allocated before the shapes match
    # Each stacked expert tensor of the model stands for E or 2E per-expert tensors in the public checkpoints.
    per_expert_names = config.num_sparse_layers() * (3 * config.num_experts - 2)
    check_state(model, _read_headers(files, max_tensors=len(model.state_dict()) + per_expert_names + 16))
    if device_map is not None:
        model = _dispatch(model, files, device_map, dtype)
    else:
        load_state(
            model, _read_state_dict(files, config.num_experts, device, dtype), device=device, dtype=dtype
        )
    model.eval()
    if weights == "fp8":
        model.quantize_fp8()
    return model, tokenizer


def _as_device(device) -> torch.device:
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise CheckpointError(
            f"device {device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')"
        ) from None
    if device.type == "meta":
        raise CheckpointError("device 'meta' holds no data: load onto 'cpu' or 'cuda'")
    if device.type == "cpu":  # one CPU device: 'cpu:0' is 'cpu' (safetensors knows no 'cpu:0')
        if device.index not in (None, 0):
            raise CheckpointError(f"device {str(device)!r} does not exist: the CPU is one device, 'cpu'")
        return torch.device("cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise CheckpointError(
            f"device {str(device)!r} is not available: this machine has "
            f"{torch.cuda.device_count()} CUDA devices"
        )
    return device


def _as_dtype(dtype, device: torch.device) -> torch.dtype:
    """The weights' dtype: one of the floating dtypes a checkpoint holds (default: default_dtype(device))."""
    if dtype is None:
        return default_dtype(device)
    if dtype not in SAFETENSORS_FLOATS.values():
        names = ", ".join(str(d) for d in SAFETENSORS_FLOATS.values())
        raise CheckpointError(f"dtype {dtype!r} cannot hold the weights: use one of {names}")
    return dtype


def _set_mask_token(config: ModelConfig, tokenizer, folder: Path) -> None:
    """The mask token: config.json's mask_token_id, else the tokenizer's mask token."""
    if config.mask_token_id is None and tokenizer is not None and tokenizer.mask_token_id is not None:
        config.mask_token_id = tokenizer.mask_token_id
    if config.is_sdar and config.mask_token_id is None:
        raise CheckpointError(
            f"{folder} is an SDAR model but neither config.json (mask_token_id) nor the "
            "tokenizer (mask_token) names a mask token"
        )
    if config.mask_token_id is not None and not 0 <= config.mask_token_id < config.vocab_size:
        raise CheckpointError(
            f"mask_token_id {config.mask_token_id} is outside the vocabulary (vocab_size {config.vocab_size})"
        )


def _dispatch(model: SDARForCausalLM, files: list[Path], device_map, dtype) -> SDARForCausalLM:
    """accelerate's big-model path: each layer on the device the map gives it (the tensors are read shard by shard
    on the CPU, experts stacked, then placed), hooks moving activations between devices."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import set_module_tensor_to_device

    if device_map == "auto":
        device_map = infer_auto_device_map(model, no_split_module_classes=["DecoderLayer"], dtype=dtype)
    state = check_state(model, _read_state_dict(files, model.config.num_experts, "cpu"))
    for name, tensor in state.items():
        owner = max(
            (m for m in device_map if m == "" or name == m or name.startswith(m + ".")), key=len, default=None
        )
        if owner is None:
            raise CheckpointError(f"device_map places no module that holds {name}")
        set_module_tensor_to_device(model, name, device_map[owner], value=tensor, dtype=dtype)
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.reset_rope(
        torch.device("cpu")
    )  # the meta-built buffer gets data before accelerate places the modules
    model = dispatch_model(model, device_map=device_map)
    first = next(iter(device_map.values()))
    model.reset_rope(torch.device(f"cuda:{first}") if isinstance(first, int) else torch.device(first))
    return model


def public_state(model: SDARForCausalLM) -> dict[str, torch.Tensor]:
    """The model's tensors under the public checkpoints' names: the stacked experts as per-expert views
    (`mlp.experts.{e}.gate_proj.weight`, ...), everything else as in `state_dict()`. Nothing is copied."""
    state = {}
    for name, t in model.state_dict().items():
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix, (gate, up) = name.removesuffix("gate_up_proj"), t.chunk(2, dim=1)
            for e in range(t.shape[0]):
                state[f"{prefix}{e}.gate_proj.weight"], state[f"{prefix}{e}.up_proj.weight"] = gate[e], up[e]
        elif name.endswith("mlp.experts.down_proj"):
            state.update(
                (f"{name.removesuffix('down_proj')}{e}.down_proj.weight", w) for e, w in enumerate(t)
            )
        else:
            state[name] = t
    return state


def save_pretrained(
    model: SDARForCausalLM,
    tokenizer,
    path,
    *,
    max_shard_bytes: int = 4 << 30,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write `model` (and `tokenizer`) as a checkpoint folder in the public SDAR/Qwen3 format.

    Shards larger than `max_shard_bytes` go into model-0000i-of-0000n.safetensors with an index.
    """
    from safetensors.torch import save_file

    if getattr(model, "weights", None) == "fp8":  # float8 rows and their scales are not the public format
        raise CheckpointError(
            "this model holds float8 weights (quantize_fp8, an inference-only form): save the model it was "
            "loaded from, and load that with weights='fp8'"
        )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config
    state = public_state(model)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    shards: list[list[str]] = [[]]  # names per shard, planned from the sizes before anything is copied
    size, itemsize = 0, (lambda t: (dtype or t.dtype).itemsize)
    for name in sorted(state):
        nbytes = state[name].numel() * itemsize(state[name])
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    for old in list(path.glob("model*.safetensors")) + [path / INDEX_NAME]:
        old.unlink(missing_ok=True)
    files = (
        [WEIGHTS_NAME]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for fname, names in zip(
        files, shards
    ):  # one shard in host memory at a time; copy=True: no shared storage
        tensors = {k: state[k].detach().to("cpu", dtype=dtype or state[k].dtype, copy=True) for k in names}
        save_file(tensors, path / fname, metadata={"format": "pt"})
        del tensors
    if len(shards) > 1:
        total = sum(t.numel() * itemsize(t) for t in state.values())
        weight_map = {k: fname for fname, names in zip(files, shards) for k in names}
        (path / INDEX_NAME).write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    raw = config.to_dict()
    raw.pop("auto_map", None)  # our checkpoints need no remote code
    arch = {
        "sdar": "SDARForCausalLM",
        "sdar_moe": "SDARMoeForCausalLM",
        "qwen3": "Qwen3ForCausalLM",
        "qwen3_moe": "Qwen3MoeForCausalLM",
    }[config.model_type]
    raw["architectures"] = [arch]
    raw["torch_dtype"] = str(dtype or model.dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def model_card(folder: str | os.PathLike) -> dict:
    """The metadata of a checkpoint folder's model card: the YAML front matter of its README.md, as the Hugging Face
    Hub reads it (`license`, `license_note`, `tags`, ...). {} for a hub id or a folder without a card. Only the
    first MAX_CARD_BYTES are read: front matter that does not end within them counts as none."""
    card = Path(folder).expanduser() / MODEL_CARD_NAME
    if not card.is_file():
        return {}
    try:
        with open(card, "rb") as f:
            text = f.read(MAX_CARD_BYTES).decode("utf-8", errors="replace")
    except OSError as e:
        raise CheckpointError(f"cannot read {card}: {e.strerror}") from None
    head, fence, _ = text.removeprefix("---\n").partition("\n---")
    if not text.startswith("---\n") or not fence:
        return {}
    import yaml

    class CardLoader(yaml.SafeLoader):
        """safe_load without aliases: `*a` repeated in lists of lists is a few bytes of YAML that prints as
        gigabytes (the card's license note is shown)."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    "aliases (*name) are not accepted in a model card",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)

    try:
        meta = yaml.load(head, Loader=CardLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise CheckpointError(
            f"{card}: the front matter between the '---' lines is not valid YAML: {e}"
        ) from None
    return meta if isinstance(meta, dict) else {}


__all__ = [
    "load_pretrained",
    "save_pretrained",
    "CheckpointError",
    "ConfigError",
    "model_card",
    "real_checkpoint_folder",
    "checkpoint_key",
]
