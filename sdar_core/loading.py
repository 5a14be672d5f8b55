"""load_pretrained / save_pretrained: the files of a public SDAR or Qwen3 checkpoint, and nothing else.

A checkpoint folder holds `config.json`, the weights as `model.safetensors` or as shards listed in
`model.safetensors.index.json`, and the tokenizer files that `transformers.AutoTokenizer` reads. Only
safetensors are read: a pickle (`*.bin`, `*.pt`) can run code when loaded, so we never open one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .config import ConfigError, ModelConfig
from .device import default_device, default_dtype
from .model import SDARForCausalLM

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
MODEL_CARD_NAME = "README.md"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "tokenizer*", "*.model"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded, with the reason in words."""


def resolve_checkpoint(path_or_hub_id: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a hub id fetched with huggingface_hub (safetensors and tokenizer only)."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    name = str(path_or_hub_id)
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~")) and not path.exists()
    if not looks_like_hub_id:
        raise CheckpointError(f"no checkpoint folder at {path} (expected a folder with config.json)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{name!r} is not a local folder, and huggingface_hub is not installed "
                              "to fetch it from the hub") from None
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated repo, ...
        raise CheckpointError(
            f"{name!r} is not a local folder and could not be fetched from the Hugging Face hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no details'}). "
            "Without network access, download the checkpoint elsewhere and pass its folder."
        ) from None


def _weight_files(folder: Path) -> list[Path]:
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e})") from None
        files = sorted({folder / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index.name} lists shards that are not in {folder}: {', '.join(missing)}")
        return files
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


def _read_state_dict(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {f.name}: it is not a valid safetensors file ({e})") from None
    return state


def _unfuse_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept transformers 5's fused expert tensors (experts.gate_up_proj [E, 2I, h], experts.down_proj
    [E, h, I], gate.weight) as well as the per-expert names of the public checkpoints."""
    out = {}
    for name, t in state.items():
        if name.endswith("mlp.experts.gate_up_proj"):
            prefix = name[: -len("gate_up_proj")]
            for e, w in enumerate(t):
                gate, up = w.chunk(2, dim=0)
                out[f"{prefix}{e}.gate_proj.weight"], out[f"{prefix}{e}.up_proj.weight"] = gate, up
        elif name.endswith("mlp.experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for e, w in enumerate(t):
                out[f"{prefix}{e}.down_proj.weight"] = w
        else:
            out[name] = t
    return out


def load_state(model: SDARForCausalLM, state: dict[str, torch.Tensor], *, device, dtype) -> None:
    """Put `state` into `model` (possibly on the meta device), checking every name and shape."""
    state = _unfuse_experts(state)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    tied = model.config.tie_word_embeddings
    if tied:
        expected.pop("lm_head.weight", None)
        state.pop("lm_head.weight", None)
    ignored = {k for k in state if k.endswith("rotary_emb.inv_freq")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - ignored)
    if missing:
        raise CheckpointError(f"the checkpoint lacks {len(missing)} tensors the config needs, e.g. {missing[:3]}")
    if unexpected:
        raise CheckpointError(f"the checkpoint has {len(unexpected)} tensors the config does not describe, "
                              f"e.g. {unexpected[:3]}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            raise CheckpointError(
                f"tensor {name} has shape {tuple(state[name].shape)} but the config implies {tuple(shape)}"
            )
    params = {k: state[k].to(device=device, dtype=dtype) for k in expected}
    model.load_state_dict(params, strict=not tied, assign=True)
    if tied:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.reset_rope(device)


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    # AutoTokenizer peeks at config.json and warns that it does not know model_type "sdar": noise here.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as e:
        raise CheckpointError(f"cannot load the tokenizer in {folder}: {type(e).__name__}: {e}") from None
    finally:
        hf_logging.set_verbosity(level)


def load_pretrained(path_or_hub_id, device=None, dtype=None, *, device_map=None, with_tokenizer: bool = True):
    """Load (model, tokenizer) from a checkpoint folder or a hub id.

    device: default CUDA when there is one, else CPU; dtype: default bfloat16 on CUDA, float32 on CPU.
    device_map: "auto" (or an accelerate device map) spreads the layers over the visible GPUs with
    accelerate's big-model loading, for checkpoints that do not fit one device.
    The mask token comes from config `mask_token_id`, else from the tokenizer's mask token; it is stored
    in `model.config.mask_token_id`.
    """
    folder = resolve_checkpoint(path_or_hub_id)
    config = ModelConfig.from_json(folder / "config.json")
    tokenizer = load_tokenizer(folder) if with_tokenizer else None
    if config.mask_token_id is None and tokenizer is not None and tokenizer.mask_token_id is not None:
        config.mask_token_id = tokenizer.mask_token_id
    if config.is_sdar and config.mask_token_id is None:
        raise CheckpointError(f"{folder} is an SDAR model but neither config.json (mask_token_id) nor the "
                              "tokenizer (mask_token) names a mask token")
    if config.mask_token_id is not None and not 0 <= config.mask_token_id < config.vocab_size:
        raise CheckpointError(f"mask_token_id {config.mask_token_id} is outside the vocabulary "
                              f"(vocab_size {config.vocab_size})")
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    files = _weight_files(folder)

    from accelerate import init_empty_weights

    with init_empty_weights():
        model = SDARForCausalLM(config)
    if device_map is not None:
        model = _dispatch(model, files, device_map, dtype)
    else:
        load_state(model, _read_state_dict(files), device=device, dtype=dtype)
    model.eval()
    return model, tokenizer


def _dispatch(model: SDARForCausalLM, files: list[Path], device_map, dtype) -> SDARForCausalLM:
    """accelerate's big-model path: each tensor goes from its shard straight to its layer's device."""
    from accelerate import dispatch_model, infer_auto_device_map, load_checkpoint_in_model

    if device_map == "auto":
        device_map = infer_auto_device_map(model, no_split_module_classes=["DecoderLayer"], dtype=dtype)
    folder = files[0].parent
    checkpoint = folder / INDEX_NAME if (folder / INDEX_NAME).is_file() else files[0]
    load_checkpoint_in_model(model, str(checkpoint), device_map=device_map, dtype=dtype, strict=True)
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model = dispatch_model(model, device_map=device_map)
    first = next(iter(device_map.values()))
    model.reset_rope(torch.device(f"cuda:{first}") if isinstance(first, int) else torch.device(first))
    return model


def save_pretrained(model: SDARForCausalLM, tokenizer, path, *, max_shard_bytes: int = 4 << 30,
                    dtype: torch.dtype | None = None) -> Path:
    """Write `model` (and `tokenizer`) as a checkpoint folder in the public SDAR/Qwen3 format.

    Shards larger than `max_shard_bytes` go into model-0000i-of-0000n.safetensors with an index.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config
    state = {k: v.detach().to("cpu", dtype=dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(state):
        nbytes = state[name].numel() * state[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = state[name]
        size += nbytes
    for old in list(path.glob("model*.safetensors")) + [path / INDEX_NAME]:
        old.unlink(missing_ok=True)
    if len(shards) == 1:
        save_file(shards[0], path / WEIGHTS_NAME, metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, path / fname, metadata={"format": "pt"})
            weight_map.update({k: fname for k in shard})
        total = sum(t.numel() * t.element_size() for t in state.values())
        (path / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                  indent=2))
    raw = config.to_dict()
    raw.pop("auto_map", None)  # our checkpoints need no remote code
    arch = {"sdar": "SDARForCausalLM", "sdar_moe": "SDARMoeForCausalLM", "qwen3": "Qwen3ForCausalLM",
            "qwen3_moe": "Qwen3MoeForCausalLM"}[config.model_type]
    raw["architectures"] = [arch]
    raw["torch_dtype"] = str(dtype or model.dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def model_card(folder: str | os.PathLike) -> dict:
    """The metadata of a checkpoint folder's model card: the YAML front matter of its README.md, as the Hugging Face
    Hub reads it (`license`, `license_note`, `tags`, ...). {} for a hub id or a folder without a card."""
    card = Path(folder).expanduser() / MODEL_CARD_NAME
    if not card.is_file():
        return {}
    text = card.read_text(encoding="utf-8")
    head, fence, _ = text.removeprefix("---\n").partition("\n---")
    if not text.startswith("---\n") or not fence:
        return {}
    import yaml

    try:
        meta = yaml.safe_load(head)
    except yaml.YAMLError as e:
        raise CheckpointError(f"{card}: the front matter between the '---' lines is not valid YAML: {e}") from None
    return meta if isinstance(meta, dict) else {}


__all__ = ["load_pretrained", "save_pretrained", "CheckpointError", "ConfigError", "model_card"]
