"""Every example prompt the studio ships gets its expected answer from the embedded sdar-tiny at the studio's
default settings, decoded on the CPU through the studio's own prompt path (app/examples.py)."""
from __future__ import annotations

import pytest
import torch

from app import examples
from app.prompting import conversation, prompt_ids
from app.settings import params_from_ui
from sdar_core import generate, load_pretrained
from sdar_core.paths import MODELS_DIR
from sdar_core.prompting import stop_ids_for


@pytest.fixture(scope="module")
def sdar_tiny():
    return load_pretrained(MODELS_DIR / "sdar-tiny", device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("example", examples.ALL, ids=lambda e: e.prompt)
def test_the_embedded_model_answers_each_shipped_example(sdar_tiny, example):
    model, tokenizer = sdar_tiny
    ids, _ = prompt_ids(tokenizer, conversation("", [], example.prompt))
    out = generate(model, [ids], params_from_ui({}), stop_token_ids=stop_ids_for(tokenizer, model.config))
    reply = tokenizer.decode(out.row_tokens(0), skip_special_tokens=True)
    assert example.answer in reply, f"{example.prompt!r} -> {reply!r}"


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
    """At the default settings sdar-tiny often fills a block in one step; the replay still opens every block
    masked, so a visitor sees the masks go (render.watch_frames, which the page's player follows frame for frame:
    tests/test_app_player.py), every frame shown at the default WATCH_MS (the player thins only replays > 20 s)."""
    from app.render import watch_frames
    from app.run import WATCH_MS

    model, tokenizer = sdar_tiny
    ids, _ = prompt_ids(tokenizer, conversation("", [], example.prompt))
    out = generate(model, [ids], params_from_ui({}), stop_token_ids=stop_ids_for(tokenizer, model.config), trace=True)
    frames = watch_frames(out.trace)
    assert sum(any(c.token is None for c in f.block) for f in frames) >= 3
    assert len(frames) * WATCH_MS / 1000 <= 20  # every frame is shown
