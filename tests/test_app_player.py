"""app/player.js against app/render.py: the page's player builds, from the compact feed (app/feed.py), the same
frames as the server's frame model (FrameBuilder / watch_frames) builds from the StepEvents: the same openings and
steps, the same masked positions, the same fresh commits and the same text, on real decodes of a tiny model (block
diffusion with a stop token, and AR). Runs the script's pure functions under node (skipped without it)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from app.feed import Feed, expand
from app.registry import ModelRegistry
from app.render import frame_at, frame_text, kept_answer_end, watch_frames
from sdar_core import generate

NODE = shutil.which("node")
SCRIPT = Path(__file__).resolve().parent.parent / "app" / "player.js"
HARNESS = """
const fs = require("fs");
const win = {};
new Function("element", "props", "watch", "window", fs.readFileSync(process.argv[1], "utf8"))(null, null, null, win);
const value = win.SDARPlayer.expand(JSON.parse(fs.readFileSync(0, "utf8")));
const frames = win.SDARPlayer.buildFrames(value);
console.log(JSON.stringify(frames.map((f) => ({
  opening: f.opening, step: f.step, text: win.SDARPlayer.frameText(f, value),
  masked: f.block.filter((c) => c.tok === null).map((c) => c.pos),
  fresh: f.done.concat(f.block).filter((c) => c.fresh).map((c) => c.pos)}))));
"""

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def js_frames(value: dict) -> list[dict]:
    done = subprocess.run(
        [NODE, "-e", HARNESS, str(SCRIPT)],
        input=json.dumps(value),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def py_frame(f, pieces, stop_ids) -> dict:
    cells = f.done + f.block
    return {
        "opening": f.opening,
        "step": f.step,
        "text": frame_text(f, pieces, stop_ids),
        "masked": [c.position for c in f.block if c.token is None],
        "fresh": [c.position for c in cells if c.fresh],
    }


@pytest.fixture(scope="module")
def models(studio_checkpoints):
    sdar, ar = studio_checkpoints
    registry = ModelRegistry(models_dir=sdar.parent)
    return registry.get(str(sdar)), registry.get(str(ar))


def feed_of(loaded, gen, ar: bool) -> dict:
    p = Feed(
        run=1,
        title="",
        block_length=gen.stats.block_length,
        ar=ar,
        pace_ms=120,
        stop_ids=loaded.stop_token_ids,
    )
    pieces = {}
    for e in gen.trace:
        pieces.update(loaded.event_pieces(e))
    p.push(gen.trace, pieces)
    p.finish("done", kept_answer_end(gen.trace, gen.lengths[0]))
    return p.value()


@pytest.mark.parametrize(
    "settings",
    [
        dict(block_length=4, steps=2, strategy="dynamic", threshold=0.4),
        dict(block_length=8, steps=4, strategy="static"),
    ],
)
def test_the_player_builds_the_servers_frames_for_block_diffusion(models, settings):
    sdar, _ = models
    ids = sdar.tokenizer("Write a long story about a lighthouse.")["input_ids"]
    gen = generate(
        sdar.model, [ids], max_new_tokens=40, stop_token_ids=sdar.stop_token_ids, trace=True, **settings
    )
    value = feed_of(sdar, gen, ar=False)
    pieces = {int(k): v for k, v in expand(value)["pieces"].items()}
    expected = [py_frame(f, pieces, sdar.stop_token_ids) for f in watch_frames(gen.trace, value["end"])]
    got = js_frames(value)
    assert got == expected
    assert sum(f["opening"] for f in got) == len({e.block for e in gen.trace})  # each block opens masked
    assert any(f["masked"] for f in got if not f["opening"])  # a block caught half-filled


def test_the_player_shows_an_ar_decode_without_blocks_or_masks(models):
    _, ar = models
    ids = ar.tokenizer("Hello there")["input_ids"]
    gen = generate(
        ar.model, [ids], max_new_tokens=12, strategy="ar", stop_token_ids=ar.stop_token_ids, trace=True
    )
    value = feed_of(ar, gen, ar=True)
    pieces = {int(k): v for k, v in expand(value)["pieces"].items()}
    got = js_frames(value)
    assert len(got) == len(gen.trace) and not any(f["opening"] or f["masked"] for f in got)
    for i, f in enumerate(got):
        assert f["text"] == frame_text(frame_at(gen.trace, i, value["end"]), pieces, ar.stop_token_ids)
