"""load_pretrained / save_pretrained on checkpoints in the exact layout of the public SDAR-4B-Chat.

The checkpoint is written here, independently of sdar_core's model: tensor names are taken from the real
SDAR-4B-Chat index (tests/fixtures/sdar-4b-chat-index.json, layers beyond the shrunk depth dropped), shapes
are computed from the shrunk config by hand, and shards + index follow the real index's structure. The
tokenizer is the real one (tests/fixtures/sdar-4b-chat/). Bad inputs must raise CheckpointError / ConfigError
with a message that names the problem, without a chained traceback.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdar_core import CheckpointError, ConfigError, load_pretrained, save_pretrained
from sdar_core.loading import INDEX_NAME

from helpers import FIXTURES

TOKENIZER_DIR = FIXTURES / "sdar-4b-chat"
REFERENCE_INDEX = json.loads((FIXTURES / "sdar-4b-chat-index.json").read_text())
MASK_ID = 151669  # <|MASK|> in the SDAR tokenizer
SHRINK = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
)


def layer_pattern(names) -> set[str]:
    """Names with the layer index replaced: model.layers.N.self_attn.q_proj.weight."""
    return {re.sub(r"\.layers\.\d+\.", ".layers.N.", n) for n in names}


def shrunk_config(**changes) -> dict:
    raw = json.loads((TOKENIZER_DIR / "config.json").read_text())
    raw.update(SHRINK)
    raw.update(changes)
    return raw


def expected_shapes(raw: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint and its shape, from the reference names and the config by hand."""
    h, inter, d = raw["hidden_size"], raw["intermediate_size"], raw["head_dim"]
    q_out, kv_out = raw["num_attention_heads"] * d, raw["num_key_value_heads"] * d
    by_suffix = {
        "embed_tokens.weight": (raw["vocab_size"], h),
        "lm_head.weight": (raw["vocab_size"], h),
        "q_proj.weight": (q_out, h),
        "k_proj.weight": (kv_out, h),
        "v_proj.weight": (kv_out, h),
        "o_proj.weight": (h, q_out),
        "q_norm.weight": (d,),
        "k_norm.weight": (d,),
        "gate_proj.weight": (inter, h),
        "up_proj.weight": (inter, h),
        "down_proj.weight": (h, inter),
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
        "model.norm.weight": (h,),
    }
    shapes = {}
    for name in REFERENCE_INDEX["weight_map"]:
        layer = re.search(r"\.layers\.(\d+)\.", name)
        if layer and int(layer.group(1)) >= raw["num_hidden_layers"]:
            continue
        shapes[name] = next(s for suffix, s in by_suffix.items() if name.endswith(suffix))
    return shapes


def write_checkpoint(folder: Path, *, tokenizer: bool = True, seed: int = 0, **config_changes) -> dict:
    """A sharded bf16 checkpoint (3 shards + index) in SDAR-4B-Chat's format; returns the tensors written."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = shrunk_config(**config_changes)
    g = torch.Generator().manual_seed(seed)
    tensors = {
        name: (torch.randn(shape, generator=g) * (0.5 if len(shape) == 2 else 0.1) + (len(shape) == 1)).to(
            torch.bfloat16
        )
        for name, shape in expected_shapes(raw).items()
    }

    def shard_of(name: str) -> int:  # embeddings + layer 0 | the other layers | final norm + lm_head
        if name.startswith("model.embed_tokens") or ".layers.0." in name:
            return 1
        return 2 if ".layers." in name else 3

    n = 3
    weight_map = {name: f"model-{shard_of(name):05d}-of-{n:05d}.safetensors" for name in tensors}
    for i in range(1, n + 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file(
            {k: v for k, v in tensors.items() if weight_map[k] == fname},
            folder / fname,
            metadata={"format": "pt"},
        )
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / INDEX_NAME).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    if tokenizer:
        for f in TOKENIZER_DIR.iterdir():
            if f.name != "config.json":
                shutil.copyfile(f, folder / f.name)
    return tensors


def small_checkpoint(folder: Path, **changes) -> dict:
    """Same format, small vocabulary, no tokenizer: for the bad-input tests (fast to write and read)."""
    return write_checkpoint(folder, tokenizer=False, vocab_size=160, mask_token_id=159, **changes)


def assert_clean_error(excinfo) -> str:
    """The error is raised on its own (`from None` or directly), not chained under a library traceback."""
    e = excinfo.value
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)
    return str(e)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdar-4b-shrunk")
    return folder, write_checkpoint(folder)


@pytest.fixture(scope="module")
def loaded(checkpoint):
    folder, _ = checkpoint
    return load_pretrained(folder, device="cpu")


IDS = torch.tensor([[151644, 872, 198, 9707, 151645, 198, 151644, 77091, 198, MASK_ID, MASK_ID, MASK_ID]])


# --- the happy path ------------------------------------------------------------------------------------


def test_sharded_sdar_checkpoint_loads_with_every_tensor_as_written(checkpoint, loaded):
    _, tensors = checkpoint
    model, tokenizer = loaded
    assert model.config.model_type == "sdar" and model.config.block_size == 4
    assert model.dtype == torch.float32 and model.device.type == "cpu"  # CPU default: float32
    state = model.state_dict()
    assert set(state) == set(tensors)
    for name, t in tensors.items():
        assert torch.equal(state[name], t.float()), name  # bf16 -> f32 is exact


def test_state_dict_names_follow_the_sdar_4b_chat_index_exactly(loaded):
    model, _ = loaded
    names = set(model.state_dict())
    assert layer_pattern(names) == layer_pattern(REFERENCE_INDEX["weight_map"])
    layers = {int(m.group(1)) for n in names if (m := re.search(r"\.layers\.(\d+)\.", n))}
    assert layers == set(range(SHRINK["num_hidden_layers"]))


def test_mask_token_resolves_to_151669_in_config_and_tokenizer(loaded):
    model, tokenizer = loaded
    assert model.config.mask_token_id == MASK_ID
    assert tokenizer.mask_token_id == MASK_ID
    assert tokenizer.convert_tokens_to_ids(tokenizer.mask_token) == MASK_ID


def test_mask_token_comes_from_tokenizer_when_config_has_none(tmp_path):
    raw = shrunk_config()
    raw.pop("mask_token_id")
    folder = tmp_path / "ckpt"
    write_checkpoint(folder)
    (folder / "config.json").write_text(json.dumps(raw))
    model, tokenizer = load_pretrained(folder, device="cpu")
    assert model.config.mask_token_id == tokenizer.mask_token_id == MASK_ID


def test_chat_template_renders_an_assistant_turn(loaded):
    _, tokenizer = loaded
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in text
    assert text.rstrip().endswith("<|im_start|>assistant")


def test_logits_are_finite_over_the_real_vocabulary(loaded):
    model, _ = loaded
    with torch.no_grad():
        logits = model(IDS)
    assert logits.shape == (1, IDS.shape[1], 151936) and torch.isfinite(logits).all()


def test_bfloat16_load_matches_float32_to_bfloat16_rounding(checkpoint, loaded):
    folder, _ = checkpoint
    model32, _ = loaded
    model16, _ = load_pretrained(folder, device="cpu", dtype=torch.bfloat16, with_tokenizer=False)
    assert all(p.dtype == torch.bfloat16 for p in model16.parameters())
    with torch.no_grad():
        a, b = model16(IDS).float(), model32(IDS)
    assert ((a - b).norm() / b.norm()).item() < 3e-2


def test_accelerate_device_map_on_cpu_gives_the_same_logits(checkpoint, loaded):
    folder, _ = checkpoint
    model, _ = loaded
    mapped, _ = load_pretrained(folder, device_map={"": "cpu"}, with_tokenizer=False)
    assert mapped.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(mapped(IDS), model(IDS))


def test_save_pretrained_round_trips_logits_config_and_shards(tmp_path, loaded):
    model, tokenizer = loaded
    out = save_pretrained(model, tokenizer, tmp_path / "saved", max_shard_bytes=8 << 20)
    index = json.loads((out / INDEX_NAME).read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((out / s).is_file() for s in shards)
    assert set(index["weight_map"]) == set(model.state_dict())
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in model.state_dict().values()
    )
    raw = json.loads((out / "config.json").read_text())
    assert raw["model_type"] == "sdar" and raw["block_size"] == 4 and raw["mask_token_id"] == MASK_ID
    assert "auto_map" not in raw  # the saved folder needs no remote code
    reloaded, tok2 = load_pretrained(out, device="cpu")
    assert tok2.mask_token_id == MASK_ID
    with torch.no_grad():
        assert torch.equal(reloaded(IDS), model(IDS))


def test_save_pretrained_small_model_writes_a_single_file_without_index(tmp_path):
    small_checkpoint(tmp_path / "src")
    model, _ = load_pretrained(tmp_path / "src", device="cpu", with_tokenizer=False)
    out = save_pretrained(model, None, tmp_path / "single")
    assert (out / "model.safetensors").is_file() and not (out / INDEX_NAME).exists()
    reloaded, _ = load_pretrained(out, device="cpu", with_tokenizer=False)
    ids = torch.tensor([[1, 2, 3, 4, 5, 159]])
    with torch.no_grad():
        assert torch.equal(reloaded(ids), model(ids))


# --- bad input -----------------------------------------------------------------------------------------


def test_missing_config_json_reads_like_a_missing_folder(tmp_path):
    """A folder without config.json and a path that does not exist get one message: an error must not tell
    which server folders exist."""
    small_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").unlink()
    messages = []
    for path in (tmp_path / "ckpt", tmp_path / "absent"):
        with pytest.raises(CheckpointError) as e:
            load_pretrained(path, with_tokenizer=False)
        messages.append(assert_clean_error(e).replace(str(path), "PATH"))
    assert messages[0] == messages[1] and "config.json" in messages[0]


def test_unknown_model_type_is_a_config_error_listing_the_supported_ones(tmp_path):
    small_checkpoint(tmp_path, model_type="llama")
    with pytest.raises(ConfigError) as e:
        load_pretrained(tmp_path, with_tokenizer=False)
    msg = assert_clean_error(e)
    assert "'llama'" in msg and "sdar" in msg and "qwen3" in msg


@pytest.mark.parametrize("field", ["hidden_size", "vocab_size", "num_hidden_layers", "intermediate_size"])
def test_missing_config_field_is_a_config_error_naming_the_field(tmp_path, field):
    small_checkpoint(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw[field]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as e:
        load_pretrained(tmp_path, with_tokenizer=False)
    assert repr(field) in assert_clean_error(e)


def test_shard_listed_in_index_but_absent_is_named(tmp_path):
    small_checkpoint(tmp_path)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError) as e:
        load_pretrained(tmp_path, with_tokenizer=False)
    assert "model-00002-of-00003.safetensors" in assert_clean_error(e)


def test_wrong_tensor_shape_names_the_tensor_and_both_shapes(tmp_path):
    small_checkpoint(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["intermediate_size"] = 48  # the shards hold 64
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError) as e:
        load_pretrained(tmp_path, with_tokenizer=False)
    msg = assert_clean_error(e)
    assert "mlp." in msg and "(64, 32)" in msg and "(48, 32)" in msg


def test_tensor_missing_from_the_shards_is_named(tmp_path):
    tensors = small_checkpoint(tmp_path)
    shard = "model-00003-of-00003.safetensors"
    save_file({"model.norm.weight": tensors["model.norm.weight"]}, tmp_path / shard)  # lm_head dropped
    with pytest.raises(CheckpointError) as e:
        load_pretrained(tmp_path, with_tokenizer=False)
    assert "lm_head.weight" in assert_clean_error(e)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_safetensors_shard_is_named(tmp_path, damage):
    small_checkpoint(tmp_path)
    shard = tmp_path / "model-00001-of-00003.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00not a safetensors file" * 10)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(tmp_path, with_tokenizer=False)
    msg = assert_clean_error(e)
    assert "model-00001-of-00003.safetensors" in msg and "safetensors" in msg


class _WritesMarker:
    """A pickle payload that creates a file when unpickled (what a malicious pytorch_model.bin could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_only_checkpoint_is_refused_without_unpickling(tmp_path):
    folder, marker = tmp_path / "ckpt", tmp_path / "UNPICKLED"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(shrunk_config(vocab_size=160, mask_token_id=159)))
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_WritesMarker(marker)))
    pickle.loads((folder / "pytorch_model.bin").read_bytes())  # the payload is live ...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError) as e:
        load_pretrained(folder, with_tokenizer=False)
    msg = assert_clean_error(e)
    assert "pytorch_model.bin" in msg and "pickle" in msg and "safetensors" in msg
    assert not marker.exists()  # ... and load_pretrained never ran it


def test_folder_without_weights_says_what_it_expected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(shrunk_config(vocab_size=160, mask_token_id=159)))
    with pytest.raises(CheckpointError) as e:
        load_pretrained(tmp_path, with_tokenizer=False)
    assert "model.safetensors" in assert_clean_error(e)


@pytest.mark.parametrize("path", ["/nonexistent/sdar/checkpoint", "./no-such-folder", "no-such-folder"])
def test_nonexistent_local_path_is_named(path):
    with pytest.raises(CheckpointError) as e:
        load_pretrained(path, with_tokenizer=False)
    msg = assert_clean_error(e)
    assert "no checkpoint folder" in msg and Path(path).name in msg


def test_hub_id_without_network_says_it_could_not_be_fetched(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # so that the id is not a local folder by accident
    with pytest.raises(CheckpointError) as e:
        load_pretrained("sdar-test-org/SDAR-does-not-exist", with_tokenizer=False)
    msg = assert_clean_error(e)
    assert "sdar-test-org/SDAR-does-not-exist" in msg and "could not be fetched" in msg
    assert "network" in msg or "offline" in msg.lower()
