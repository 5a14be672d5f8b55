"""app/recording.py and app/run.py: a finished run's Recording holds generate's own trace (files included) and the
player's final value; the run's answer text is the tokenizer's decoding of generate's tokens."""

from __future__ import annotations

import csv
import io
import json
import threading

import torch

from app.feed import expand
from app.recording import record
from app.registry import ModelRegistry
from app.render import kept_answer_end
from app.settings import DecodeRequest, DecodeSettings
from app.studio import Studio
from sdar_core import generate


def test_a_recording_holds_the_trace_files_and_the_players_value(studio_checkpoints):
    sdar, _ = studio_checkpoints
    studio = Studio(registry=ModelRegistry(models_dir=sdar.parent))
    settings = DecodeSettings(block_length=4, steps=2, strategy="dynamic", threshold=0.5, max_new_tokens=16)
    run = studio.start(
        DecodeRequest(str(sdar), settings),
        [{"role": "user", "content": "Tell me a story."}],
        threading.Event(),
    )
    list(run.follow())
    rec = record("a story", run)
    loaded = run.model
    ref = generate(
        loaded.model,
        torch.tensor([run.job.ids]),
        stop_token_ids=loaded.stop_token_ids,
        trace=True,
        **settings.generate_kwargs(),
    )
    assert run.answer_text() == loaded.tokenizer.decode(ref.row_tokens(0), skip_special_tokens=True)
    steps = json.loads(open(rec.json_path).read())["steps"]
    texts = ("block_text", "committed_text", "candidate_text")
    assert [{k: v for k, v in s.items() if k not in texts} for s in steps] == json.loads(ref.trace_json())[
        "steps"
    ]
    for s, e in zip(steps, ref.trace):  # every id with its printed text beside it
        assert s["block_text"] == [rec.pieces[t] for t in e.block_state]
        assert s["committed_text"] == [rec.pieces[e.block_state[o]] for o in e.committed]
        assert s["candidate_text"] == {str(o): rec.pieces[t] for o, t in e.candidates.items()}
    rows = list(csv.reader(open(rec.csv_path, newline="")))
    assert [r[:9] for r in rows] == list(csv.reader(io.StringIO(ref.trace_csv())))
    assert rows[0][9:] == ["candidate_text", "global_step"]
    assert all(r[9] == rec.pieces[int(r[6])] for r in rows[1:]) and rows[1][10] == "1"
    assert rec.answer_end == kept_answer_end(ref.trace, ref.lengths[0])
    assert (
        rec.feed["status"] == "done"
        and rec.feed["end"] == rec.answer_end
        and len(expand(rec.feed)["steps"]) == rec.n_steps
    )


def test_a_stopped_runs_answer_is_what_it_had_committed(studio_checkpoints):
    sdar, _ = studio_checkpoints
    studio = Studio(registry=ModelRegistry(models_dir=sdar.parent))
    stop = threading.Event()
    settings = DecodeSettings(block_length=4, steps=4, strategy="static", max_new_tokens=64)
    run = studio.start(DecodeRequest(str(sdar), settings), [{"role": "user", "content": "Go on."}], stop)
    for _ in run.follow(interval=0):
        stop.set()  # Stop after the first block reached the handler
    assert run.stopped and run.stats is None and run.feed.status == "stopped"
    ref = generate(
        run.model.model,
        [run.job.ids],
        stop_token_ids=run.model.stop_token_ids,
        trace=True,
        **settings.generate_kwargs(),
    )
    assert 1 <= len(run.events) < len(ref.trace) and run.tokens is None  # ended early
    committed = run.committed_tokens()
    assert committed and committed == ref.row_tokens(0)[: len(committed)]  # a prefix of the whole answer
    assert run.answer_text() == run.model.tokenizer.decode(committed, skip_special_tokens=True)
