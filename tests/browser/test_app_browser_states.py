"""The studio in a real browser, for the states a visitor meets between two decodes: controls that cannot conflict
(steps follow the block length, block 1 answers, a negative seed refused beside the box), nothing left over from a
previous model, decode or replay (the model's note, the race's warm-up line, the visualizer's last recording while
a new one waits, a replay after Clear), Send during a replay, the defaults showing a block half denoised, and the
first open of the visualizer (its cost measured, its size bounded).

Same page setup as test_app_browser.py: the default app (the embedded sdar-tiny), headless Debian chromium.
"""

from __future__ import annotations

import re
import threading

import pytest
from test_app_browser import (
    ARGS,
    CHROMIUM,
    SHOTS,
    WATCH_PLAYER,
    frames,
    pick_model,
    player,
    replay_done,
    set_slider,
    url,
    wait_text,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]
__all__ = ["url"]  # the served app, shared with test_app_browser.py's fixture

# Long tasks (> 50 ms of the main thread) as the browser reports them, from the moment this runs.
WATCH_LONG_TASKS = """() => { window.sdarLongTasks = [];
  new PerformanceObserver((list) => { for (const e of list.getEntries()) window.sdarLongTasks.push(e.duration); })
    .observe({type: 'longtask'}); }"""


@pytest.fixture(scope="module")
def browser(url):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, url):
    """A fresh page (a session of its own) for each test."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)
    page.goto(url)
    page.wait_for_selector("#sdar-message textarea")
    page.wait_for_function(
        "document.querySelector('#sdar-seed input').disabled"
    )  # the page's load events ran
    yield page
    page.close()


def send(page, message: str) -> None:
    page.locator("#sdar-message textarea").fill(message)
    page.locator("#sdar-send").click()


def answered(page, text: str) -> None:
    """Wait until the chat holds `text` and the answer's stats are shown."""
    page.wait_for_function(f"""() => document.querySelector('#sdar-chatbot').innerText.includes({text!r})
      && document.querySelector('#sdar-chat-stats').innerText.includes('TPF')""")


def test_at_the_defaults_the_chat_shows_a_block_half_denoised(page):
    """A frame of the watch replay shows the block open with some positions committed and some still masked; the
    first open of the visualizer then shows the answer's first frame, masked, and stays small (one canvas for the
    heatmap, one frame drawn), however long the page takes to draw it here (measured and printed, not asserted)."""
    page.evaluate(WATCH_PLAYER, "#sdar-live")
    page.evaluate("""() => { const root = document.querySelector('#sdar-live .sdar-player'); window.sdarHalf = 0;
      new MutationObserver(() => { if (Number(root.dataset.masked) > 0 && Number(root.dataset.filled) > 0)
        window.sdarHalf += 1; }).observe(root, {attributes: true, attributeFilter: ['data-frame']}); }""")
    send(page, "What is 47 + 38?")
    answered(page, "Answer: 85")
    page.wait_for_function(replay_done("sdar-live"))
    assert page.evaluate("window.sdarHalf") >= 1, frames(page)

    page.evaluate(WATCH_LONG_TASKS)
    page.get_by_role("tab", name="Denoising visualizer").click()
    page.wait_for_function("document.querySelector('#sdar-vis-player .sdar-player').dataset.frame === '0'")
    page.wait_for_timeout(1000)
    print("long tasks on the visualizer's first open (ms):", page.evaluate("window.sdarLongTasks"))
    first = player(page, "sdar-vis-player")
    assert first["masked"] > 0 and "▒" in first["text"] and "opens" in first["where"]
    size = page.evaluate("""() => { const p = document.querySelector('#sdar-vis-player');
      return {nodes: p.querySelectorAll('*').length, canvases: p.querySelectorAll('canvas').length,
              cells: p.querySelectorAll('.sdar-frame .sdar-tok').length}; }""")
    # One frame's tokens and the controls; the heatmap is pixels, not one element per position and step.
    assert size["canvases"] == 1 and size["nodes"] < size["cells"] + 120, size


def test_steps_follow_the_block_length_and_block_1_answers(page):
    set_slider(page, "sdar-block-length", 1)
    page.wait_for_function("document.querySelector('#sdar-steps input[type=number]').value === '1'")
    assert page.locator("#sdar-steps input[type=range]").is_disabled()
    send(page, "What is 47 + 38?")
    answered(page, "Answer: 85")
    assert "⚠️" not in page.locator("#sdar-chat-note").inner_text()
    assert (
        "block 1" in page.locator("#sdar-chat-stats").inner_text()
        or "NFE" in page.locator("#sdar-chat-stats").inner_text()
    )
    set_slider(
        page, "sdar-block-length", 8
    )  # back to a wider block: the steps follow, and can be moved again
    page.wait_for_function("document.querySelector('#sdar-steps input[type=number]').max === '8'")
    assert not page.locator("#sdar-steps input[type=range]").is_disabled()


def test_a_negative_seed_is_refused_beside_the_box(page):
    set_slider(page, "sdar-temperature", 0.7)
    page.wait_for_function("!document.querySelector('#sdar-seed input').disabled")
    seed = page.locator("#sdar-seed input")
    seed.fill("-1")
    seed.press("Tab")
    send(page, "What is 47 + 38?")
    wait_text(page, "sdar-chat-note", "Seed must be in [0, 2147483647], got -1")
    assert page.locator(".toast-body:visible").count() == 0
    assert page.locator("#sdar-message textarea").input_value() == "What is 47 + 38?"  # kept, as typed


def test_send_during_a_replay_answers_and_clear_stops_the_replay(page):
    set_slider(page, "sdar-pace", 500)  # a slow replay: several seconds per answer
    send(page, "What is 47 + 38?")
    answered(page, "Answer: 85")
    page.wait_for_function("document.querySelector('#sdar-live .sdar-player').dataset.playing === '1'")
    send(page, "How many minutes are in 5 hours?")  # while the first answer still replays
    answered(page, "Answer: 300")
    assert "How many minutes are in 5 hours?" in page.locator("#sdar-chatbot").inner_text()
    page.wait_for_function("document.querySelector('#sdar-live .sdar-player').dataset.playing === '1'")
    page.locator("#sdar-clear").click()
    page.wait_for_function("document.querySelector('#sdar-live .sdar-player').dataset.status === 'empty'")
    page.wait_for_timeout(1500)
    state = page.evaluate(
        "(() => { const r = document.querySelector('#sdar-live .sdar-player');"
        " return {playing: r.dataset.playing, status: r.dataset.status,"
        " frames: r.dataset.frames}; })()"
    )
    assert state == {"playing": "0", "status": "empty", "frames": "0"}, state
    assert "Answer" not in page.locator("#sdar-chatbot").inner_text()


def test_clear_while_an_answer_decodes_ends_it(page):
    set_slider(page, "sdar-max-new-tokens", 1024)
    send(page, "Write a long story about the sea.")
    page.wait_for_function("Number(document.querySelector('#sdar-live .sdar-player').dataset.frames) > 0")
    page.locator("#sdar-clear").click()
    page.wait_for_function("document.querySelector('#sdar-live .sdar-player').dataset.status === 'empty'")
    page.wait_for_timeout(2000)  # the cancelled answer sends nothing more
    assert player(page, "sdar-live")["frames"] == 0 and page.locator("#sdar-chatbot .message").count() == 0


def test_switching_the_model_clears_the_previous_models_note(page):
    set_slider(page, "sdar-block-length", 3)
    # The steps slider follows the block length (a server round trip): send once it has, as set_decoding waits.
    page.wait_for_function("document.querySelector('#sdar-steps input[type=number]').max == '3'")
    send(page, "What is 47 + 38?")
    wait_text(page, "sdar-chat-note", "block 3 was not trained for")
    page.wait_for_function("document.querySelector('#sdar-chat-stats').innerText.includes('TPF')")
    pick_model(page, "assets/models/ar-tiny")
    wait_text(page, "sdar-decode-note", "autoregressive")
    page.wait_for_function("!document.querySelector('#sdar-chat-note').innerText.includes('not trained')")


def test_the_race_headline_follows_the_lanes(page):
    """While the lanes decode, the headline says so (never the warm-up's line under running lanes)."""
    page.get_by_role("tab", name="AR vs SDAR").click()
    set_slider(page, "sdar-race-repeats", 1)
    # What a visitor sees: the headline and the lanes at every painted frame.
    watch = """() => { window.sdarRace = []; window.sdarRaceWatch = true;
      const record = () => { window.sdarRace.push({head: document.querySelector('#sdar-speedup').innerText,
        lanes: [...document.querySelectorAll('.sdar-lane')].map(l => l.innerText)});
        if (window.sdarRaceWatch) requestAnimationFrame(record); };
      requestAnimationFrame(record); }"""
    for _ in range(
        10
    ):  # the first race loads both models: a slow load is told, and the race is pressed again
        page.evaluate(watch)
        page.locator("#sdar-race").click()
        page.wait_for_function(
            "['SDAR vs AR', 'is loading'].some(t => "
            "document.querySelector('#sdar-speedup').innerText.includes(t))"
        )
        if "is loading" not in page.locator("#sdar-speedup").inner_text():
            break
        page.wait_for_timeout(3000)
    seen = page.evaluate("window.sdarRaceWatch = false, window.sdarRace")
    running = [
        s
        for s in seen
        if any(lane.split("\n")[1:2] and lane.split("\n")[1].startswith("run") for lane in s["lanes"])
    ]
    assert running, seen[-3:]
    assert not [s for s in running if "Warming up" in s["head"]], running[:3]


def test_the_visualizer_clears_the_last_recording_the_moment_run_is_pressed(page, monkeypatch):
    """While a new run waits for the model, the previous recording's frame, scrubber, heatmap and table are gone;
    the new decode then fills them."""
    from app.visualizer import Visualizer

    page.get_by_role("tab", name="Denoising visualizer").click()
    page.locator("#sdar-vis-prompt textarea").fill("What is 305 - 178?")
    page.locator("#sdar-vis-run").click()
    page.wait_for_function("document.querySelector('#sdar-vis-title').innerText.includes('NFE')")
    page.wait_for_function(replay_done("sdar-vis-player"))
    assert page.evaluate("document.querySelector('#sdar-vis-player .sdar-heatmap').dataset.steps") != "0"

    gate, original = threading.Event(), Visualizer._run

    def held(self, *args):
        gate.wait(120)
        yield from original(self, *args)

    monkeypatch.setattr(Visualizer, "_run", held)
    try:
        page.locator("#sdar-vis-prompt textarea").fill("How many minutes are in 5 hours?")
        page.locator("#sdar-vis-run").click()
        page.wait_for_function(
            "document.querySelector('#sdar-vis-title').innerText.includes('Waiting for the model')",
            timeout=30_000,
        )
        page.wait_for_function(
            "document.querySelector('#sdar-vis-player .sdar-player').dataset.frames === '0'", timeout=30_000
        )
        waiting = page.evaluate("""() => { const p = document.querySelector('#sdar-vis-player');
          return {heat: p.querySelector('.sdar-heatmap').dataset.steps,
                  controls: getComputedStyle(p.querySelector('.sdar-controls')).display,
                  rows: document.querySelectorAll('#sdar-blocks tbody tr').length,
                  text: document.querySelector('#sdar-blocks').innerText}; }""")
        assert waiting["heat"] == "0" and waiting["controls"] == "none", waiting
        assert "305" not in waiting["text"] and waiting["rows"] <= 1, waiting
    finally:
        gate.set()
    page.wait_for_function("document.querySelector('#sdar-vis-title').innerText.includes('NFE')")
    page.wait_for_function(replay_done("sdar-vis-player"))
    assert "How many minutes" in page.locator("#sdar-vis-title").inner_text()
    SHOTS.mkdir(parents=True, exist_ok=True)


def test_the_race_says_what_its_timings_support_and_shows_ar_as_ar(page):
    """The headline leads with the forwards saved; its verdict on speed is faster/slower only with a ratio above 1
    (or no measurable difference); the AR lanes count tokens, with no block, no denoising step and no mask; the
    stop token is the quiet end marker, never its raw text."""
    import re

    page.get_by_role("tab", name="AR vs SDAR").click()
    set_slider(page, "sdar-race-repeats", 2)
    page.locator("#sdar-race").click()
    page.wait_for_function(
        "[...document.querySelectorAll('.sdar-lane')].every(l => l.innerText.includes('done (run 2 of 2)'))"
    )
    page.wait_for_function("document.querySelector('#sdar-speedup').innerText.includes('median of 2 runs')")
    head = page.locator("#sdar-speedup").inner_text()
    assert re.match(r"SDAR vs AR on the same weights: [\d.]+× fewer forwards", head), head
    verdicts = re.findall(r"([\d.]+)× (faster|slower)|no measurable difference on this machine", head)
    assert len(verdicts) == 2, head  # SDAR vs AR, and vs the twin
    assert all(float(x) >= 1 for x, _ in verdicts if x) and "speed-up" not in head.replace(
        "so the speed-up stays below", ""
    )
    for lane in ("ar", "twin"):
        text = page.locator(f"#sdar-lane-{lane}").inner_text()
        assert re.search(r"token (\d+) of \1 \(one token per forward\)", text), text
        assert not re.search(r"block|denoising|▒", text.split("\n", 1)[1]), text  # past the lane's title
        assert page.locator(f"#sdar-lane-{lane} .sdar-block").count() == 0
    lanes = page.locator("#sdar-race-lanes").inner_text()
    assert "<|im_end|>" not in lanes and page.locator("#sdar-race-lanes .sdar-end").count() >= 3


def test_the_gpu_tab_shows_one_named_run_at_a_time_with_its_ceiling_in_the_legend(page):
    page.get_by_role("tab", name="AR vs SDAR").click()
    page.get_by_text("GPU measurements (benchmarks/results/)").click()
    page.wait_for_selector("#sdar-gpu-chart .js-plotly-plot", state="attached")

    def chart():
        return page.evaluate("""() => { const g = document.querySelector('#sdar-gpu-chart .js-plotly-plot');
          return {names: g.data.map(t => t.name), ys: g.data.flatMap(t => t.y), title: g.layout.title.text,
                  annotations: (g.layout.annotations || []).length, type: g._fullLayout.yaxis.type,
                  range: g._fullLayout.yaxis.range}; }""")

    first = chart()
    ceilings = [n for n in first["names"] if n.startswith("AR ceiling")]
    assert len(ceilings) == 1 and re.search(r": \d+ tokens/s", ceilings[0]), first["names"]
    assert first["annotations"] == 0 and len(first["names"]) <= 12
    if first["type"] == "log":  # the axis spans the run's values, a decade or so beyond at most
        assert first["range"][1] - first["range"][0] < 4, first["range"]
    page.locator("#sdar-gpu-run input").click()
    options = page.locator("[role=option]").all_inner_texts()
    assert len(options) == len(set(options)) >= 5 and all(" · " in o for o in options), options
    other = next(o for o in options if "h100-sdar-1.7b" in o and "context" not in o)
    page.locator("[role=option]", has_text=other).first.click()
    page.wait_for_function(
        "document.querySelector('#sdar-gpu-chart .js-plotly-plot').layout.title.text"
        ".includes('h100-sdar-1.7b')"
    )
    assert "H100" in chart()["title"] and "H100" in page.locator("#sdar-gpu-table").inner_text()


LABELS = "[data-testid=block-label], [data-testid=block-info], .block label > span:first-child"


def test_the_page_uses_one_complete_font_quiet_labels_and_a_full_width_message_box(page):
    """No web font (the theme's held 99 glyphs, so bold labels mixed two faces); labels are light text, not
    coloured chips; the message box spans the chat tab; the model card shows no mask id; the strategies and the
    heatmap say what they mean."""
    fonts = page.evaluate("[...document.fonts].filter(f => f.status !== 'unloaded').map(f => f.family)")
    assert not fonts, fonts
    families = page.evaluate(
        "[...new Set([...document.querySelectorAll('#sdar-main *')].map("
        "e => getComputedStyle(e).fontFamily))]"
    )
    assert not [f for f in families if "Plex" in f or "Source Sans" in f], families
    labels = page.evaluate(
        """() => [...document.querySelectorAll(LABELS)].filter(e => e.offsetParent !== null)
        .map(e => ({text: e.innerText.slice(0, 30), weight: Number(getComputedStyle(e).fontWeight),
                    bg: getComputedStyle(e).backgroundColor}))""".replace("LABELS", repr(LABELS))
    )
    assert labels and all(l["weight"] <= 500 for l in labels), [l for l in labels if l["weight"] > 500]
    assert all(l["bg"] in ("rgba(0, 0, 0, 0)", "transparent") for l in labels), [
        l for l in labels if l["bg"] != "rgba(0, 0, 0, 0)"
    ]
    box = page.locator("#sdar-message").bounding_box()
    chat = page.locator("#sdar-chatbot").bounding_box()
    assert box["width"] >= 0.9 * chat["width"], (box, chat)
    assert "mask id" not in page.locator("#sdar-model-info").inner_text()
    strategy = page.locator("#sdar-strategy").inner_text()
    assert all(f"{name}:" in strategy for name in ("static", "dynamic", "sequential", "entropy")), strategy
    legend = page.locator("#sdar-live .sdar-legend").text_content()
    assert "the answer ends" in legend and "decoded after the end: dropped" in legend
    page.get_by_role("tab", name="Denoising visualizer").click()
    heat = page.locator("#sdar-vis-player .sdar-heat-title").text_content()
    assert "One row per denoising step" in heat and "colour" in heat
