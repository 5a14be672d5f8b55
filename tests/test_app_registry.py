"""app/registry.py: the model registry on the studio's test checkpoints (conftest.studio_checkpoints), which
these tests also check: stop tokens, chat template, the AR twin next to the SDAR folder."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO


def test_fixture_checkpoints_load_with_their_stop_tokens_and_chat_template(studio_checkpoints):
    from app.registry import ModelRegistry, ar_twin_name

    sdar_path, ar_path = studio_checkpoints
    registry = ModelRegistry(models_dir=sdar_path.parent)
    m = registry.get(str(sdar_path))
    assert m.is_sdar and m.config.block_size == 4
    vocab = m.tokenizer.get_vocab()
    assert vocab["<|im_end|>"] in m.stop_token_ids and vocab["<|endoftext|>"] in m.stop_token_ids
    assert m.config.mask_token_id == vocab["<|MASK|>"] and m.config.mask_token_id not in m.stop_token_ids
    text = m.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert ar_twin_name(str(sdar_path)) == str(ar_path)
    assert sorted(Path(p).name for p in registry.available()) == ["ar-tiny", "sdar-tiny"]
    assert registry.get(str(sdar_path)) is m  # cached


def test_registry_names_a_missing_folder_and_the_missing_default_model(tmp_path):
    from app.registry import DEFAULT_MODEL, ModelRegistry, ModelUnavailable

    registry = ModelRegistry(models_dir=tmp_path)
    with pytest.raises(ModelUnavailable, match="no checkpoint folder"):
        registry.get(str(tmp_path / "nope"))
    if not (REPO / DEFAULT_MODEL).exists():
        with pytest.raises(ModelUnavailable, match="not here yet"):
            registry.get(DEFAULT_MODEL)
