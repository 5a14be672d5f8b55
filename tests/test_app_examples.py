"""Every example prompt the studio ships gets its expected answer from the embedded sdar-tiny at the studio's
default settings, decoded on the CPU through the studio's own prompt path (app/examples.py): the conversation the
Chat tab sends, with its default system prompt."""

from __future__ import annotations

import pytest
import torch

from app import examples
from app.prompting import DEFAULT_SYSTEM, conversation, prompt_ids
from app.settings import DecodeSettings
from sdar_core import generate, load_pretrained
from sdar_core.paths import MODELS_DIR
from sdar_core.prompting import stop_ids_for


@pytest.fixture(scope="module")
def sdar_tiny():
    return load_pretrained(MODELS_DIR / "sdar-tiny", device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("example", examples.ALL, ids=lambda e: e.prompt)
def test_the_embedded_model_answers_each_shipped_example_and_shows_a_block_half_denoised(sdar_tiny, example):
    """The reply is right, and at least one step leaves its block open with some answer positions committed and
    some still masked: the frame after it shows a block partly filled (at block 4 and threshold 0.9 every block of
    every example filled in one step)."""
    model, tokenizer = sdar_tiny
    out = decode_example(sdar_tiny, example)
    reply = tokenizer.decode(out.row_tokens(0), skip_special_tokens=True)
    assert example.answer in reply, f"{example.prompt!r} -> {reply!r}"
    half = [
        e for e in out.trace if not e.final and e.committed and set(e.masked_confidence) - set(e.committed)
    ]
    assert half, f"{example.prompt!r}: every block filled in one step"


def decode_example(sdar_tiny, example):
    """The example as the Chat tab decodes it at the page's defaults (system prompt and decoding settings)."""
    from app.layout import DEFAULTS

    model, tokenizer = sdar_tiny
    ids, _ = prompt_ids(tokenizer, conversation(DEFAULT_SYSTEM, [], example.prompt))
    return generate(
        model,
        [ids],
        stop_token_ids=stop_ids_for(tokenizer, model.config),
        trace=True,
        **DEFAULTS.generate_kwargs(),
    )


def test_the_page_opens_on_the_settings_and_system_prompt_the_examples_are_checked_at():
    from app.layout import layout

    _, page = layout("assets/models/sdar-tiny", ["assets/models/sdar-tiny"], "", None)
    assert page.system.value == DEFAULT_SYSTEM
    shown = {name: c.value for name, c in page.decode.items() if name != "model_name"}
    assert DecodeSettings.from_ui(shown) == DecodeSettings()


def test_every_example_list_of_the_layout_comes_from_the_checked_examples():
    from app import layout

    checked = set(examples.prompts(examples.ALL))
    for shown in (layout.CHAT_EXAMPLES, layout.VIS_EXAMPLES, layout.RACE_EXAMPLES, [layout.RACE_PROMPT]):
        assert shown and set(shown) <= checked


@pytest.mark.parametrize("block, warned", [(4, False), (16, False), (1, False), (3, True), (32, True)])
def test_a_block_size_the_model_was_not_trained_at_gets_a_note(block, warned):
    """sdar-tiny records trained_block_sizes [1, 2, 4, 8, 16] in its config.json; any other block gets a note."""
    from app.registry import DEFAULT_MODEL, ModelRegistry
    from app.settings import DecodeRequest
    from app.studio import Studio

    studio = Studio(registry=ModelRegistry(device="cpu"))
    req = DecodeRequest.from_ui({"model_name": DEFAULT_MODEL, "block_length": block, "steps": 1})
    _, notes = studio.lane(req, [{"role": "user", "content": "What is 2 + 2?"}])
    assert any("was not trained for" in n and "1, 2, 4, 8, 16" in n for n in notes) == warned


@pytest.mark.parametrize("example", examples.CHAT, ids=lambda e: e.prompt)
def test_each_chat_example_shows_masks_in_at_least_three_frames_of_its_watch_replay(sdar_tiny, example):
    """The replay opens every block masked, so a visitor sees the masks go (render.watch_frames, which the page's
    player follows frame for frame: tests/test_app_player.py), every frame shown at the default WATCH_MS (the
    player thins only replays > 20 s)."""
    from app.render import watch_frames
    from app.run import WATCH_MS

    frames = watch_frames(decode_example(sdar_tiny, example).trace)
    assert sum(any(c.token is None for c in f.block) for f in frames) >= 3
    assert len(frames) * WATCH_MS / 1000 <= 20  # every frame is shown
