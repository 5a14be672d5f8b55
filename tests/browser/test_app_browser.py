"""The studio in a real browser: Debian's chromium, headless, driven by playwright, on the default app (the
embedded sdar-tiny, as `python app.py` opens it) so that the screenshots show real answers.

Picks an example prompt, watches the answer stream step by step into the block in flight, then the stats;
decodes another prompt in the denoising visualizer (heatmap rendered, replay, a frame with masks left); runs the
AR vs SDAR race against the AR twin; saves assets/screenshots/chat.png, visualizer.png and race.png.
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


# Counts the distinct frames the block-in-flight view shows, and whether any had this step's commits outlined.
WATCH_LIVE = """() => {
  window.sdarFrames = new Set(); window.sdarFresh = false;
  const live = document.querySelector('#sdar-live');
  new MutationObserver(() => {
    if (live.querySelector('.sdar-frame')) window.sdarFrames.add(live.innerHTML);
    if (live.querySelector('.sdar-fresh')) window.sdarFresh = true;
  }).observe(live, {childList: true, subtree: true, characterData: true});
}"""


def test_chat_streams_then_visualizer_and_race_render(page):
    SHOTS.mkdir(parents=True, exist_ok=True)
    set_slider(page, "sdar-pace", 120)  # slow the live view down so that the stream can be watched

    # Chat: an example fills the box; the answer streams step by step, then the stats line.
    page.locator("#sdar-examples").get_by_text("What is 47 + 38?").click()
    page.wait_for_function("document.querySelector('#sdar-message textarea').value === 'What is 47 + 38?'")
    page.evaluate(WATCH_LIVE)
    page.locator("#sdar-send").click()
    page.wait_for_function("document.querySelector('#sdar-chat-stats').innerText.includes('TPF')")
    assert page.evaluate("window.sdarFrames.size") >= 5 and page.evaluate("window.sdarFresh")
    stats = page.locator("#sdar-chat-stats").inner_text()
    assert "NFE" in stats and "tokens/s" in stats
    bubbles = page.locator("#sdar-chatbot .message")
    assert bubbles.count() >= 2 and "Answer: 85" in bubbles.last.inner_text()
    assert "▒" not in bubbles.last.inner_text()
    page.wait_for_function("document.querySelector('#sdar-model-info').innerText.includes('block size')")
    shoot(page, "chat.png")

    # Visualizer: another prompt with longer blocks and a stricter threshold, so that blocks take several steps;
    # heatmap drawn by plotly; replay and the step slider move the frame.
    set_decoding(page, 8, 8, 0.99)
    page.get_by_role("tab", name="Denoising visualizer").click()
    page.locator("#sdar-vis-prompt textarea").fill("How many minutes are in 5 hours?")
    page.locator("#sdar-vis-run").click()
    page.wait_for_function("document.querySelector('#sdar-vis-title').innerText.includes('NFE')"
                           " && document.querySelector('#sdar-vis-frame').innerText.includes('How many minutes')")
    page.wait_for_selector("#sdar-heatmap .js-plotly-plot .heatmaplayer, #sdar-heatmap .js-plotly-plot .hm",
                           state="attached")
    assert page.locator("#sdar-vis-frame .sdar-tok").count() > 0
    n = int(re.search(r"frame (\d+)/\1", page.locator("#sdar-vis-frame").inner_text()).group(1)) - 1  # last step
    assert n >= 3
    page.wait_for_function(f"document.querySelector('#sdar-vis-step input[type=number]').max == '{n}'")
    page.locator("#sdar-play").click()  # from the last frame, the replay starts over
    page.wait_for_function(f"!document.querySelector('#sdar-vis-frame').innerText.includes('frame {n + 1}/')")
    page.get_by_role("button", name="Pause").click()
    page.wait_for_timeout(600)  # a tick already on its way lands before the slider is moved by hand
    for step in range(n):  # the first frame that still holds masks: a block mid-denoising
        set_slider(page, "sdar-vis-step", step)
        page.wait_for_function(f"document.querySelector('#sdar-vis-frame').innerText.includes('frame {step + 1}/')")
        assert page.locator("#sdar-vis-step input[type=number]").input_value() == str(step)
        if page.locator("#sdar-vis-frame .sdar-frame .sdar-mask").count() > 0:
            break
    else:
        pytest.fail("no frame of the replay holds a masked position")
    assert page.locator("#sdar-blocks table").count() >= 1 or page.locator("#sdar-blocks").inner_text()
    shoot(page, "visualizer.png")

    # AR vs SDAR at the default settings: three lanes, then the speedup and the table.
    set_decoding(page, 4, 4, 0.9)
    page.get_by_role("tab", name="AR vs SDAR").click()
    assert page.locator("#sdar-race-prompt textarea").input_value() == "What is 47 + 38?"
    page.locator("#sdar-race").click()
    # Warmed up, then 3 timed runs per lane: medians in the headline and the table, a bar chart per lane.
    page.wait_for_function("document.querySelector('#sdar-speedup').innerText.includes('median of 3 runs')"
                           " && document.querySelector('#sdar-speedup').innerText.includes('Against the AR twin')")
    for lane in ("ar", "sdar", "twin"):
        assert "done (run 3 of 3):" in page.locator(f"#sdar-lane-{lane}").inner_text()
    assert "ar-tiny" in page.locator("#sdar-lane-twin").inner_text()
    page.wait_for_selector("#sdar-race-chart .js-plotly-plot .barlayer", state="attached")
    assert page.locator("#sdar-race-chart .js-plotly-plot .barlayer .point").count() == 6  # tokens/s + forwards
    shoot(page, "race.png")
