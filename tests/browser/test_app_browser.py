"""The studio in a real browser: Debian's chromium, headless, driven by playwright.

Sends a chat message and watches the answer stream (mask glyphs in the block in flight, then the stats),
opens the denoising visualizer (heatmap rendered, replay), runs the AR vs SDAR race, and saves
screenshots to assets/screenshots/ (chat.png, visualizer.png, race.png).
"""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "assets" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    sys.path.insert(0, str(REPO / "tests"))
    from test_app_checkpoint import write_checkpoints

    from app.registry import ModelRegistry
    from app.ui import LAUNCH_KWARGS, build_app

    sdar, _ = write_checkpoints(tmp_path_factory.mktemp("models"))
    demo = build_app(default_model=str(sdar), registry=ModelRegistry(models_dir=sdar.parent))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **LAUNCH_KWARGS)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def page(url):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector("#sdar-message textarea")
        yield page
        browser.close()


def set_slider(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_chat_streams_then_visualizer_and_race_render(page):
    SHOTS.mkdir(parents=True, exist_ok=True)
    set_slider(page, "sdar-max-new-tokens", 48)
    set_slider(page, "sdar-pace", 40)  # slow the live view down so that the stream can be watched

    # Chat: the block in flight shows mask glyphs while the answer streams, then the stats line.
    page.locator("#sdar-message textarea").fill("Why is the sky blue?")
    page.locator("#sdar-send").click()
    page.wait_for_function("document.querySelectorAll('#sdar-live .sdar-tok').length > 24"
                           " && document.querySelector('#sdar-live .sdar-mask') !== null"
                           " && document.querySelector('#sdar-live .sdar-fresh') !== null", polling=50)
    page.screenshot(path=str(SHOTS / "chat.png"), full_page=True)
    page.wait_for_function("document.querySelector('#sdar-chat-stats').innerText.includes('TPF')")
    stats = page.locator("#sdar-chat-stats").inner_text()
    assert "NFE" in stats and "tokens/s" in stats
    bubbles = page.locator("#sdar-chatbot .message")
    assert bubbles.count() >= 2 and bubbles.last.inner_text().strip()
    assert "▒" not in bubbles.last.inner_text()

    # Visualizer: filled from the chat's trace; heatmap drawn by plotly; replay moves the frame.
    page.get_by_role("tab", name="Denoising visualizer").click()
    page.wait_for_selector("#sdar-heatmap .js-plotly-plot .heatmaplayer, #sdar-heatmap .js-plotly-plot .hm",
                           state="attached")
    assert page.locator("#sdar-vis-frame .sdar-tok").count() > 0
    set_slider(page, "sdar-vis-step", 3)
    page.wait_for_function("document.querySelector('#sdar-vis-frame').innerText.includes('frame 4/')")
    assert page.locator("#sdar-vis-frame .sdar-mask").count() > 0  # early frames still hold masks
    page.locator("#sdar-play").click()
    page.wait_for_function("!document.querySelector('#sdar-vis-frame').innerText.includes('frame 4/')")
    page.screenshot(path=str(SHOTS / "visualizer.png"), full_page=True)
    assert page.locator("#sdar-blocks table").count() >= 1 or page.locator("#sdar-blocks").inner_text()

    # AR vs SDAR: three lanes, then the speedup and the table.
    page.get_by_role("tab", name="AR vs SDAR").click()
    page.locator("#sdar-race").click()
    page.wait_for_function("document.querySelector('#sdar-speedup').innerText.includes('vs the AR twin')")
    for lane in ("ar", "sdar", "twin"):
        assert "done:" in page.locator(f"#sdar-lane-{lane}").inner_text()
    page.screenshot(path=str(SHOTS / "race.png"), full_page=True)
