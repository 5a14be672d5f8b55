"""The studio in a real browser: Debian's chromium, headless, driven by playwright, on the default app (the
embedded sdar-tiny, as `python app.py` opens it) so that the screenshots show real answers.

At the default settings, picks an example prompt and watches its answer replay frame by frame (masks in several
frames), replays it, stops a slower replay midway; explains an empty Send beside the box; greys the decoding controls
out for the AR twin and describes a catalog model; decodes another prompt in the denoising visualizer (steps from 1,
the heatmap marking the step shown); runs the AR vs SDAR race against the AR twin; opens the page 500 px wide.
Saves assets/screenshots/chat.png, models.png, visualizer.png, race.png and narrow.png.
"""
from __future__ import annotations
import os

import re
from pathlib import Path

import pytest

from conftest import REPO, free_port

CHROMIUM = Path("/usr/bin/chromium")
# The README's screenshots are refreshed with SDAR_UPDATE_SCREENSHOTS=1; ordinary runs (CI) write theirs to
# tests/artifacts/ (ignored) so that a test run never modifies tracked files.
SHOTS = REPO / "assets" / "screenshots" if os.environ.get("SDAR_UPDATE_SCREENSHOTS") else REPO / "tests" / "artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")]


@pytest.fixture(scope="module")
def url():
    if not (REPO / "assets" / "models" / "sdar-tiny" / "config.json").is_file():
        pytest.skip("the embedded model assets/models/sdar-tiny is not in this checkout")
    from app.layout import LAUNCH_KWARGS
    from app.ui import build_app

    demo = build_app()  # what `python app.py` serves: sdar-tiny selected, ar-tiny its twin
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **LAUNCH_KWARGS)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def page(url):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(120_000)  # generous: CI machines are shared
        page.goto(url)
        page.wait_for_selector("#sdar-message textarea")
        yield page
        browser.close()


def set_slider(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def set_decoding(page, block: int, steps: int, threshold: float) -> None:
    set_slider(page, "sdar-block-length", block)
    # The steps slider's range follows the block length (a server round trip): wait for it before setting it.
    page.wait_for_function(f"document.querySelector('#sdar-steps input[type=number]').max == '{block}'")
    set_slider(page, "sdar-steps", steps)
    set_slider(page, "sdar-threshold", threshold)


def shoot(page, name: str) -> None:
    """A full-page screenshot once every event has settled, with no tooltip under the mouse."""
    page.mouse.move(1, 1)
    page.wait_for_function("document.querySelectorAll('.progress-text, .eta-bar').length === 0")
    page.screenshot(path=str(SHOTS / name), full_page=True)


# Records every distinct frame the block-in-flight view shows: its text, whether it holds masks, whether it
# outlines this step's commits.
WATCH_LIVE = """() => {
  window.sdarFrames = []; const seen = new Set();
  const live = document.querySelector('#sdar-live');
  const record = () => {
    const frame = live.querySelector('.sdar-frame');
    if (!frame || seen.has(live.innerHTML)) return;
    seen.add(live.innerHTML);
    window.sdarFrames.push({text: live.innerText, masks: live.querySelectorAll('.sdar-mask').length,
                            fresh: live.querySelectorAll('.sdar-fresh').length});
  };
  new MutationObserver(record).observe(live, {childList: true, subtree: true, characterData: true});
}"""


# No output of the chat carries gradio's "Error" badge of a failed event.
CHAT_OUTPUTS = ", ".join(f"#sdar-{e} .error" for e in ("chatbot", "message", "live", "chat-note"))
NO_ERROR_BADGE = f"() => ![...document.querySelectorAll('{CHAT_OUTPUTS}')].some(e => e.offsetParent !== null)"


def frames(page) -> list[dict]:
    return page.evaluate("window.sdarFrames")


def wait_text(page, elem_id: str, text: str) -> None:
    page.wait_for_function(f"document.querySelector('#{elem_id}').innerText.includes({text!r})")


def pick_model(page, name: str) -> None:
    box = page.locator("#sdar-model input")
    box.fill(name)
    box.press("Enter")


def test_chat_watch_replay_stop_errors_controls_then_visualizer_and_race(page):
    SHOTS.mkdir(parents=True, exist_ok=True)
    # Chat at the default settings (watch pace on): an example's answer replays with masks in several frames.
    page.locator("#sdar-examples").get_by_text("What is 47 + 38?").click()
    page.wait_for_function("document.querySelector('#sdar-message textarea').value === 'What is 47 + 38?'")
    page.evaluate(WATCH_LIVE)
    page.locator("#sdar-send").click()
    wait_text(page, "sdar-chat-stats", "TPF")
    watched = [f for f in frames(page) if "Watch" in f["text"]]
    assert sum(f["masks"] > 0 for f in watched) >= 3 and any(f["fresh"] for f in watched)
    assert any(re.search(r"block \d+ opens, \d+ positions masked", f["text"]) for f in watched)
    assert re.search(r"Done — step (\d+) of \1", page.locator("#sdar-live").inner_text())
    stats = page.locator("#sdar-chat-stats").inner_text()
    assert "NFE" in stats and "tokens/s" in stats
    bubbles = page.locator("#sdar-chatbot .message")
    assert bubbles.count() >= 2 and "Answer: 85" in bubbles.last.inner_text() and "▒" not in bubbles.last.inner_text()

    # Replay: the same frames again, at the same pace, in the live view.
    page.evaluate(WATCH_LIVE)
    page.locator("#sdar-replay").click()
    page.wait_for_function("window.sdarFrames.some(f => f.text.includes('Replay'))"
                           " && window.sdarFrames.at(-1).text.includes('Done')")
    assert sum(f["masks"] > 0 for f in frames(page) if "Replay" in f["text"]) >= 3

    # Stop during a slower replay: it stays on the frame it shows and says Stopped.
    set_slider(page, "sdar-pace", 400)
    page.locator("#sdar-examples").get_by_text("What comes next: 3, 7, 11, 15, 19, ?").click()
    page.locator("#sdar-send").click()
    wait_text(page, "sdar-live", "Watch")
    page.wait_for_timeout(800)
    page.wait_for_function("document.querySelector('#sdar-live .sdar-mask') !== null")  # a block open, masked
    page.mouse.move(1, 1)
    page.screenshot(path=str(SHOTS / "chat.png"), full_page=True)  # mid-replay (400 ms a frame)
    page.locator("#sdar-stop").click()
    wait_text(page, "sdar-chat-stats", "Stopped the replay at step")
    live = page.locator("#sdar-live").inner_text()
    assert "Stopped" in live and "Done" not in live
    at = re.search(r"step (\d+) of (\d+)", live)
    assert int(at.group(1)) < int(at.group(2))
    set_slider(page, "sdar-pace", 120)

    # An empty Send is explained beside the box: no overlay, the conversation unchanged.
    shown = bubbles.count()
    page.locator("#sdar-message textarea").fill("")
    page.locator("#sdar-send").click()
    wait_text(page, "sdar-chat-note", "Type a message first.")
    page.wait_for_function(NO_ERROR_BADGE)  # the failed event's outputs settle again: nothing covers the chat
    page.wait_for_timeout(500)
    assert page.locator(".toast-body:visible").count() == 0 and bubbles.count() == shown
    assert "Answer: 85" in page.locator("#sdar-chatbot").inner_text()  # the conversation still in view

    # The controls follow the model: the AR twin greys out the SDAR controls, with one line why.
    pick_model(page, "assets/models/ar-tiny")
    wait_text(page, "sdar-decode-note", "autoregressive")
    for elem in ("sdar-block-length", "sdar-steps", "sdar-threshold"):
        assert page.locator(f"#{elem} input[type=range]").is_disabled()
    pick_model(page, "assets/models/sdar-tiny")
    page.wait_for_function("!document.querySelector('#sdar-block-length input[type=range]').disabled")
    assert "trained at block sizes 1, 2, 4, 8, 16" in page.locator("#sdar-block-length").inner_text()
    set_slider(page, "sdar-block-length", 3)
    wait_text(page, "sdar-decode-note", "block 3 was not trained for")
    set_slider(page, "sdar-block-length", 4)
    page.wait_for_function("!document.querySelector('#sdar-decode-note').innerText.includes('not trained')")
    assert page.locator("#sdar-seed input").is_disabled()  # greedy: the seed does not matter
    set_slider(page, "sdar-temperature", 0.7)
    page.wait_for_function("!document.querySelector('#sdar-seed input').disabled")
    set_slider(page, "sdar-temperature", 0)
    # A catalog model, described before any download: size, memory, block size, download, and whether it fits here.
    pick_model(page, "JetLM/SDAR-4B-Chat")
    wait_text(page, "sdar-model-info", "needs about")
    info = page.locator("#sdar-model-info").inner_text()
    assert "4.41 B parameters" in info and "trained at block size 4" in info and "download 8.8 GB" in info
    assert "⚠️" in info or "✓" in info
    page.locator("#sdar-settings").screenshot(path=str(SHOTS / "models.png"))
    pick_model(page, "assets/models/sdar-tiny")
    wait_text(page, "sdar-model-info", "block size")

    # Visualizer: longer blocks and a stricter threshold, so that blocks take several steps; steps from 1.
    set_decoding(page, 8, 8, 0.99)
    page.get_by_role("tab", name="Denoising visualizer").click()
    page.locator("#sdar-vis-prompt textarea").fill("How many minutes are in 5 hours?")
    page.locator("#sdar-vis-run").click()
    page.wait_for_function("document.querySelector('#sdar-vis-title').innerText.includes('NFE')"
                           " && document.querySelector('#sdar-vis-frame').innerText.includes('How many minutes')")
    page.wait_for_selector("#sdar-heatmap .js-plotly-plot .heatmaplayer, #sdar-heatmap .js-plotly-plot .hm",
                           state="attached")
    n = int(re.search(r"step (\d+) of \1", page.locator("#sdar-vis-frame").inner_text()).group(1))  # the last
    assert n >= 3
    page.wait_for_function(f"document.querySelector('#sdar-vis-step input[type=number]').max == '{n}'")
    assert page.locator("#sdar-vis-step input[type=number]").get_attribute("min") == "1"
    page.locator("#sdar-play").click()  # from the last frame, the replay starts over
    page.wait_for_function(f"!document.querySelector('#sdar-vis-frame').innerText.includes('step {n} of {n}')")
    page.get_by_role("button", name="Pause").click()
    page.wait_for_timeout(600)  # a tick already on its way lands before the slider is moved by hand
    for step in range(1, n):  # the first frame that still holds masks: a block mid-denoising
        set_slider(page, "sdar-vis-step", step)
        page.wait_for_function(f"document.querySelector('#sdar-vis-frame').innerText.includes('step {step} of {n}')")
        if page.locator("#sdar-vis-frame .sdar-frame .sdar-mask").count() > 0:
            break
    else:
        pytest.fail("no frame of the replay holds a masked position")
    page.wait_for_function(  # the heatmap marks the row of the step shown
        f"(document.querySelector('#sdar-heatmap .js-plotly-plot').layout.shapes || [])"
        f".some(s => s.y0 === {step} - 0.5)")
    assert page.locator("#sdar-blocks table").count() >= 1
    assert "global steps" in page.locator("#sdar-blocks").inner_text()
    shoot(page, "visualizer.png")

    # AR vs SDAR at the default settings: three lanes, then the speedup and the table.
    set_decoding(page, 4, 4, 0.9)
    page.get_by_role("tab", name="AR vs SDAR").click()
    prompt = page.locator("#sdar-race-prompt textarea")
    assert prompt.input_value() == "What is 47 + 38?"
    prompt.fill("")  # an empty prompt is explained in the headline's place, with no overlay
    page.locator("#sdar-race").click()
    wait_text(page, "sdar-speedup", "Type a prompt first.")
    assert page.locator(".toast-body:visible").count() == 0
    prompt.fill("What is 47 + 38?")
    page.locator("#sdar-race").click()
    page.wait_for_function("document.querySelector('#sdar-speedup').innerText.includes('median of 3 runs')"
                           " && document.querySelector('#sdar-speedup').innerText.includes('Against the AR twin')")
    for lane in ("ar", "sdar", "twin"):
        assert "done (run 3 of 3):" in page.locator(f"#sdar-lane-{lane}").inner_text()
    assert "ar-tiny" in page.locator("#sdar-lane-twin").inner_text()
    assert page.locator("#sdar-lane-sdar .sdar-discarded").count() > 0  # decoded after <|im_end|>: struck out
    page.wait_for_selector("#sdar-race-chart .js-plotly-plot .barlayer", state="attached")
    assert page.locator("#sdar-race-chart .js-plotly-plot .barlayer .point").count() == 6  # tokens/s + forwards
    page.get_by_text("GPU measurements (benchmarks/results/)").click()
    page.wait_for_selector("#sdar-gpu-chart .js-plotly-plot", state="attached")
    names = page.evaluate("document.querySelector('#sdar-gpu-chart .js-plotly-plot').data.map(t => t.name)")
    assert any(name.startswith("AR ceiling") for name in names), names
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no table spills out
    shoot(page, "race.png")


def test_a_narrow_screen_shows_the_chat_before_the_settings(page, url):
    narrow = page.context.browser.new_page(viewport={"width": 500, "height": 900})
    try:
        narrow.goto(url)
        narrow.wait_for_selector("#sdar-message textarea")
        chat, settings = (narrow.locator(f"#{e}").bounding_box() for e in ("sdar-chatbot", "sdar-settings"))
        assert chat["y"] < 450 and settings["y"] > chat["y"] + chat["height"]
        assert narrow.locator("#sdar-message").bounding_box()["y"] < 900  # the message box on the first screen
        assert narrow.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        SHOTS.mkdir(parents=True, exist_ok=True)
        narrow.screenshot(path=str(SHOTS / "narrow.png"))
    finally:
        narrow.close()
