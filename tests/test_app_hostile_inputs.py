"""Issue 33, finding 9: wrong-typed values, NaN and infinite numbers, choices that are not offered and short requests,
sent raw to every public endpoint of a launched studio (as a script would: gradio_client refuses to send NaN, a raw
JSON body does not). Before: 40 such values got Gradio's generic error or `{"error": null}`, each with a full
traceback in the server log. Now each gets a readable message that names the input and what it accepts, and the
log gets exactly one line for it and no traceback."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

MODEL = "{model}"  # replaced by the test checkpoint's folder
RACE_MODE = "one after the other (fair timings)"
CHAT = [
    "Hi",
    "",
    MODEL,
    4,
    4,
    "dynamic",
    0.9,
    0.0,
    1.0,
    4,
    0,
    0,
]  # message, system, model, decode..., seed, pace
VISUALIZE = ["Hi", MODEL, 4, 4, "dynamic", 0.9, 0.0, 1.0, 4, 0, 0, ""]  # ..., seed, pace, system prompt
RACE = ["Hi", MODEL, 4, 4, "dynamic", 0.9, 0.0, 1.0, 4, 0, RACE_MODE, False, 1, ""]
SWEEP = ["Hi", MODEL, [4], [0.9], 8]
NAN, INF = float("nan"), float("inf")


def bad(api: str, base: list, index: int, value) -> tuple[str, list]:
    data = list(base)
    data[index] = value
    return api, data


CASES = [  # (endpoint, values): every one of them must be refused readably
    *[
        bad("chat", CHAT, i, v)
        for i, v in [
            (3, "x"),
            (3, [1]),
            (3, NAN),
            (3, 0),
            (3, 65),
            (4, "four"),
            (4, {}),
            (5, 5),
            (5, "bogus"),
            (5, None),
            (6, NAN),
            (6, "high"),
            (6, INF),
            (7, -INF),
            (7, [0.5]),
            (8, NAN),
            (8, "p"),
            (9, INF),
            (9, NAN),
            (9, "many"),
            (10, NAN),
            (10, "abc"),
            (10, INF),
            (10, [0]),
            (11, "slow"),
            (11, NAN),
            (2, 7),
            (2, ["a"]),
        ]
    ],
    *[bad("visualize", VISUALIZE, i, v) for i, v in [(2, "x"), (4, 3), (9, NAN), (8, -1)]],
    *[bad("race", RACE, i, v) for i, v in [(10, 3), (12, "many"), (12, NAN), (12, 9)]],
    *[bad("sweep", SWEEP, i, v) for i, v in [(2, "4"), (2, [3]), (3, "0.9"), (3, [2.0]), (4, NAN)]],
    ("load_model", [5]),
    ("chat", ["Hi"]),  # too few values
]
UNREADABLE = ("Traceback", "Could not preprocess", "<class", "null", "Error(")


def call(url: str, api: str, data: list, model: str) -> tuple[str | None, str]:
    """POST the raw values (NaN and Infinity as JSON literals) and read the event stream: (the error message or
    None, the whole stream)."""
    body = json.dumps({"data": data}).replace(MODEL, model)  # json.dumps writes NaN and Infinity as literals
    r = httpx.post(
        f"{url}gradio_api/call/{api}", content=body, headers={"content-type": "application/json"}, timeout=60
    )
    r.raise_for_status()
    stream = httpx.get(f"{url}gradio_api/call/{api}/{r.json()['event_id']}", timeout=120).text
    for block in stream.split("\n\n"):
        if block.startswith("event: error"):
            payload = block.split("data: ", 1)[1]
            message = json.loads(payload)["error"] if payload.strip() not in ("null", "") else None
            return message, stream
    return None, stream


def test_finding9_every_unreadable_value_gets_a_readable_message_and_one_log_line(
    launched_studio, caplog, capfd
):
    url, sdar = launched_studio
    caplog.set_level(logging.INFO, logger="sdar.app")
    unclear, log_lines = [], []
    for api, data in CASES:
        before = len(caplog.records)
        message, stream = call(url, api, data, str(sdar))
        lines = [r for r in caplog.records[before:] if r.name == "sdar.app"]
        log_lines.append(len(lines))
        if (
            not message
            or any(word in message for word in UNREADABLE)
            or not ("must" in message or "needs" in message)
        ):
            unclear.append((api, data, message, stream[-300:]))
        assert len(lines) == 1 and lines[0].getMessage().startswith("refused: "), (api, data, lines)
        assert not any(r.exc_info for r in lines)
    assert not unclear, "\n".join(map(str, unclear))
    assert log_lines == [1] * len(CASES)
    err = capfd.readouterr().err
    assert "Traceback" not in err, err[-2000:]
    print(
        f"\nhostile inputs: {len(CASES)} sent, {len(CASES) - len(unclear)} clear refusals, {len(unclear)} unclear"
    )


def test_the_refusal_names_the_input_and_what_it_accepts(launched_studio):
    url, sdar = launched_studio
    cases = {
        ("chat", 10, NAN): "Seed must be a finite number (a whole number), got nan",
        ("chat", 5, 5): "strategy must be one of 'static', 'dynamic', 'sequential', 'entropy', got 5",
        ("chat", 9, INF): "ax new tokens must be a number from 1 to 1024, got inf",
        ("race", 10, 3): f"must be one of '{RACE_MODE}', 'at the same time (live race)', got 3",
    }
    bases = {"chat": CHAT, "race": RACE}
    for (api, i, value), expected in cases.items():
        message, _ = call(url, *bad(api, bases[api], i, value), str(sdar))
        assert message and expected in message, (api, i, value, message)
    message, _ = call(url, "chat", ["Hi"], str(sdar))
    assert message == "this request needs 13 values, got 1"


@pytest.mark.parametrize("api, data", [("chat", CHAT), ("visualize", VISUALIZE)])
def test_good_values_sent_raw_are_still_served(launched_studio, api, data):
    url, sdar = launched_studio
    message, stream = call(url, api, data, str(sdar))
    assert message is None and "event: complete" in stream
