"""app/catalog.py and what the model picker says about each model before it is loaded: parameters, memory,
block size and download checked against the real configs of tests/fixtures/; too little memory, no network and
a missing folder each explained in place (the picker's status), a download's progress read from the hub cache."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from helpers import FIXTURES

GB = 10**9


def registry(tmp_path, *, online=True, free=64 * GB, **kw):
    from app.registry import ModelRegistry

    return ModelRegistry(
        models_dir=tmp_path,
        device="cpu",
        dtype=__import__("torch").bfloat16,
        online=lambda: online,
        free_memory=lambda: free,
        hub_cache=tmp_path / "hub",
        **kw,
    )


def describe(reg, name):
    from app.studio import Studio
    from app.ui import describe_model

    return describe_model(Studio(registry=reg), name)


@pytest.mark.parametrize(
    "name, config, index",
    [
        (
            "JetLM/SDAR-4B-Chat",
            FIXTURES / "sdar-4b-chat" / "config.json",
            FIXTURES / "sdar-4b-chat-index.json",
        ),
        ("JetLM/SDAR-8B-Chat", FIXTURES / "sdar-8b-chat-config.json", None),
    ],
)
def test_the_catalog_entries_match_the_real_configs(name, config, index):
    from app.catalog import BY_NAME
    from sdar_core.config import ModelConfig

    spec, real = BY_NAME[name], ModelConfig.from_json(config)
    assert spec.parameters == real.num_parameters() and spec.block_size == real.block_size == 4
    if index is not None:  # the download is the bf16 weights: the safetensors index's total size
        assert spec.download_bytes == json.loads(index.read_text())["metadata"]["total_size"]


def test_one_list_is_the_picker_the_allow_list_and_the_family():
    from app import registry as reg
    from app.catalog import NAMES

    assert reg.CURATED is NAMES and len(NAMES) == 8
    assert {n for n in NAMES if n.startswith("JetLM/")} == {
        f"JetLM/SDAR-{s}-Chat" for s in ("1.7B", "4B", "8B", "30B-A3B")
    }
    assert {n for n in NAMES if n.startswith("Qwen/")} == {
        f"Qwen/Qwen3-{s}" for s in ("1.7B", "4B", "8B", "30B-A3B")
    }


def test_a_catalog_model_is_described_with_its_size_memory_block_and_download(tmp_path):
    text = describe(registry(tmp_path), "JetLM/SDAR-4B-Chat")
    assert "4.41 B parameters" in text and "trained at block size 4" in text
    assert "about **10.6 GB** of memory in bf16" in text and "download **8.8 GB**" in text
    assert "✓ Downloads 8.8 GB on first use" in text
    assert "autoregressive" in describe(registry(tmp_path), "Qwen/Qwen3-8B")
    assert "128 experts, 8 active" in describe(registry(tmp_path), "JetLM/SDAR-30B-A3B-Chat")


def test_too_little_memory_or_no_network_says_why_in_place_and_load_refuses(tmp_path):
    from app.registry import ModelUnavailable

    small = registry(tmp_path, free=12 * GB)
    text = describe(small, "JetLM/SDAR-8B-Chat")
    assert "⚠️ JetLM/SDAR-8B-Chat needs about 19.7 GB in bfloat16" in text and "12.0 GB of CPU memory" in text
    assert "✓" in describe(small, "JetLM/SDAR-1.7B-Chat")  # the small one fits
    with pytest.raises(ModelUnavailable, match="pick a smaller model"):
        small.start("JetLM/SDAR-8B-Chat")
    offline = registry(tmp_path, online=False)
    assert "cannot be reached (no network)" in describe(offline, "JetLM/SDAR-4B-Chat")
    with pytest.raises(ModelUnavailable, match="no network"):
        offline.start("JetLM/SDAR-4B-Chat")
    snapshot = tmp_path / "hub" / "models--JetLM--SDAR-4B-Chat" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_text("")
    assert "✓ In the local model cache" in describe(
        offline, "JetLM/SDAR-4B-Chat"
    )  # cached: no network needed


def test_a_download_shows_its_progress_from_the_hub_cache(tmp_path):
    from app.ui import loading_markdown

    reg = registry(tmp_path)
    blobs = tmp_path / "hub" / "models--JetLM--SDAR-4B-Chat" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "abc.incomplete").write_bytes(b"x" * 1000)
    loading = SimpleNamespace(name="JetLM/SDAR-4B-Chat", seconds=12.0)
    assert loading_markdown(reg, loading) == (
        "⏳ Loading **JetLM/SDAR-4B-Chat**… 12 s · downloaded 0.0 GB of about 8.8 GB"
    )
    assert reg.progress(SimpleNamespace(name="assets/models/sdar-tiny")) == ""


def test_a_path_that_does_not_exist_is_a_missing_local_folder_not_a_hub_id(tmp_path):
    open_reg = registry(tmp_path, allow_any_model=True)
    text = describe(open_reg, "/nonexistent/model")
    assert "no checkpoint folder at '/nonexistent/model' on this machine (a local path" in text
    assert "hub" not in text
    public = describe(registry(tmp_path), "/nonexistent/model")  # exposed: one message for every refused name
    assert "'/nonexistent/model' is not offered by this studio" in public
