"""app/recording.py: a finished lane's Recording holds generate's own trace (files included) and its last frame,
which the visualizer's replay shows as a replay of the whole trace would."""
from __future__ import annotations

import json
import threading

import torch

from app.recording import record
from app.registry import ModelRegistry
from app.render import frame_at, frame_html, kept_answer_end
from app.settings import DecodeSettings
from app.streaming import Lane, stream
from app.visualizer import replay_frame
from sdar_core import generate


def test_a_recording_holds_the_trace_files_and_the_last_frame_of_its_lane(studio_checkpoints):
    sdar, _ = studio_checkpoints
    loaded = ModelRegistry(models_dir=sdar.parent).get(str(sdar))
    settings = DecodeSettings(block_length=4, steps=2, strategy="dynamic", threshold=0.5, max_new_tokens=16)
    lane = Lane(loaded, loaded.tokenizer("Tell me a story.")["input_ids"], settings)
    list(stream({"a": lane}, threading.Event()))
    rec = record("a story", lane)
    ref = generate(loaded.model, torch.tensor([lane.ids]), stop_token_ids=loaded.stop_token_ids, trace=True,
                   **settings.generate_kwargs())
    assert json.loads(open(rec.json_path).read())["steps"] == json.loads(ref.trace_json())["steps"]
    assert open(rec.csv_path, newline="").read() == ref.trace_csv()
    assert rec.answer_end == kept_answer_end(ref.trace, ref.lengths[0]) and rec.last_frame is lane.frame
    last = rec.n_steps - 1
    title = f"'a story' — frame {last + 1}/{rec.n_steps}"
    assert replay_frame(rec, last) == frame_html(frame_at(ref.trace, last, rec.answer_end), rec.pieces, title=title)
    assert replay_frame(rec, 0) == frame_html(frame_at(ref.trace, 0, rec.answer_end), rec.pieces,
                                              title=f"'a story' — frame 1/{rec.n_steps}")
