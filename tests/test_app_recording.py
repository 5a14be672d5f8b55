"""app/recording.py: a finished lane's Recording holds generate's own trace (files included) and its last frame,
which the visualizer's replay shows as a replay of the whole trace would."""
from __future__ import annotations

import csv
import io
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
    steps = json.loads(open(rec.json_path).read())["steps"]
    texts = ("block_text", "committed_text", "candidate_text")
    assert [{k: v for k, v in s.items() if k not in texts} for s in steps] == json.loads(ref.trace_json())["steps"]
    for s, e in zip(steps, ref.trace):  # every id with its printed text beside it
        assert s["block_text"] == [rec.pieces[t] for t in e.block_state]
        assert s["committed_text"] == [rec.pieces[e.block_state[o]] for o in e.committed]
        assert s["candidate_text"] == {str(o): rec.pieces[t] for o, t in e.candidates.items()}
    rows = list(csv.reader(open(rec.csv_path, newline="")))
    assert [r[:9] for r in rows] == list(csv.reader(io.StringIO(ref.trace_csv())))
    assert rows[0][9:] == ["candidate_text", "global_step"]
    assert all(r[9] == rec.pieces[int(r[6])] for r in rows[1:]) and rows[1][10] == "1"
    assert rec.answer_end == kept_answer_end(ref.trace, ref.lengths[0]) and rec.last_frame is lane.frame
    n, title = rec.n_steps, "'a story'"
    assert replay_frame(rec, n) == frame_html(frame_at(ref.trace, n - 1, rec.answer_end), rec.pieces, title=title,
                                              total=n)
    assert replay_frame(rec, 1) == frame_html(frame_at(ref.trace, 0, rec.answer_end), rec.pieces, title=title,
                                              total=n)  # steps counted from 1


def test_play_and_its_ticks_move_the_heatmaps_band_with_the_frame(studio_checkpoints):
    from app.visualizer import Visualizer

    sdar, _ = studio_checkpoints
    loaded = ModelRegistry(models_dir=sdar.parent).get(str(sdar))
    lane = Lane(loaded, loaded.tokenizer("Tell me a story.")["input_ids"],
                DecodeSettings(block_length=4, steps=4, strategy="static", max_new_tokens=8))
    list(stream({"a": lane}, threading.Event()))
    rec = record("a story", lane)
    step, frame, fig, timer = Visualizer.play(rec.n_steps, rec)  # at the end: starts over at step 1
    assert step == 1 and f"step 1 of {rec.n_steps}" in frame and fig.layout.shapes[0].y0 == 0.5
    step, frame, fig, _ = Visualizer.tick(step, rec)
    assert step == 2 and f"step 2 of {rec.n_steps}" in frame and fig.layout.shapes[0].y0 == 1.5
