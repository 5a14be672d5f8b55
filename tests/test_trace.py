"""sdar_core/trace.py: a StepEvent's dict form is its dataclass fields as JSON takes them (dataclasses.asdict with
the int keys written as strings), holds no reference into the event, and reads back to the same event."""

from __future__ import annotations

import json
from dataclasses import asdict, fields

from sdar_core.trace import StepEvent


def event() -> StepEvent:
    return StepEvent(
        row=1,
        block=2,
        step=3,
        block_start=40,
        block_state=[5, 9, 7, 7],
        committed=[0, 2],
        committed_confidence=[0.9, 0.75],
        masked_confidence={0: 0.9, 2: 0.75, 3: 0.1},
        candidates={0: 5, 2: 7, 3: 11},
        prompt_positions=[1],
        final=False,
        stopped=False,
    )


def test_to_dict_is_asdict_with_string_keys_and_reads_back():
    e = event()
    d = e.to_dict()
    want = asdict(e)
    want["masked_confidence"] = {str(k): v for k, v in e.masked_confidence.items()}
    want["candidates"] = {str(k): v for k, v in e.candidates.items()}
    assert d == want and list(d) == [f.name for f in fields(StepEvent)]  # every field, in order
    assert StepEvent.from_dict(json.loads(json.dumps(d))) == e
    d["block_state"].append(0)
    d["committed"].clear()
    assert e.block_state == [5, 9, 7, 7] and e.committed == [0, 2]  # a copy, not the event's own lists
