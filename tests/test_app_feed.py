"""app/feed.py: what the page receives of a decode. The steps travel as a growing text, so that Gradio's work per
message (it walks every output element by element, then diffs it against the last) stays constant while the answer
grows, and the change it sends is the text appended since the last message."""

from __future__ import annotations

import json

from gradio.utils import diff

from app.feed import Feed, compact, empty, expand
from sdar_core.trace import StepEvent


def event(block: int, step: int, tokens: list[int], committed: list[int], final: bool = False) -> StepEvent:
    return StepEvent(
        row=0,
        block=block,
        step=step,
        block_start=8 + 4 * block,
        block_state=tokens,
        committed=committed,
        committed_confidence=[0.5] * len(committed),
        masked_confidence={i: 0.25 for i in range(4) if i not in committed},
        candidates={i: 7 for i in range(4) if i not in committed},
        prompt_positions=[],
        final=final,
        stopped=False,
    )


def test_the_log_reads_back_as_the_steps_and_pieces_pushed():
    feed = Feed(run=3, title="t", block_length=4, ar=False, pace_ms=120, stop_ids=[2])
    first = [event(0, 0, [5, 1, 1, 1], [0]), event(0, 1, [5, 6, 6, 5], [1, 2, 3], final=True)]
    second = [event(1, 0, [9, 5, 1, 1], [0, 1])]
    feed.push(first, {5: "a", 6: "b", 1: "▒"})
    feed.push(second, {9: "c", 5: "a"})  # 5's text was sent already
    feed.finish("done", 13)
    value = feed.value()
    got = expand(value)
    assert got["steps"] == [compact(e) for e in first + second]
    assert got["pieces"] == {"5": "a", "6": "b", "1": "▒", "9": "c"}
    assert {k: got[k] for k in ("run", "L", "ar", "pace", "stop", "status", "end")} == {
        "run": 3,
        "L": 4,
        "ar": False,
        "pace": 120,
        "stop": [2],
        "status": "done",
        "end": 13,
    }
    lines = value["log"].splitlines()
    assert [("pieces" in json.loads(line)) for line in lines] == [True, False, False, True, False]
    assert sum('"5":"a"' in line for line in lines) == 1  # each token's text once
    assert "log" not in got and expand(empty("nothing"))["steps"] == []


def test_each_message_changes_only_the_log_by_an_append_of_the_new_steps():
    feed = Feed(run=1, title="", block_length=4, ar=False, pace_ms=0)
    sent = []
    for b in range(50):
        feed.push(
            [event(b, 0, [5, 5, 1, 1], [0, 1]), event(b, 1, [5, 5, 6, 6], [2, 3], final=True)],
            {5: "x", 6: "y"},
        )
        sent.append(feed.value())
    for before, after in zip(sent, sent[1:]):
        edits = diff(before, after)
        assert len(edits) == 1 and edits[0][0] == "append" and edits[0][1] == ["log"]
        assert len(edits[0][2]) < 400  # the two new steps, not the answer so far
