"""The studio in a real browser: Debian's chromium, headless, driven by playwright, on the default app (the
embedded sdar-tiny, as `python app.py` opens it) so that the screenshots show real answers.

One page, shared by the tests in order, one per tab: the chat at the default settings (the answer arrives while the
page's player replays the denoising with masks in several frames; Replay, Stop, the scrubber; an empty Send explained
beside the box); the controls following the model; the visualizer (scrubbing, the heatmap following the step
shown); the AR vs SDAR race against the AR twin; the page 500 px wide.
Saves assets/screenshots/chat.png, models.png, visualizer.png, race.png and narrow.png.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from sdar_core.paths import REPO

from helpers import free_port

CHROMIUM = Path("/usr/bin/chromium")
# The README's screenshots are refreshed with SDAR_UPDATE_SCREENSHOTS=1; ordinary runs (CI) write theirs to
# tests/artifacts/ (ignored) so that a test run never modifies tracked files.
SHOTS = (
    REPO / "assets" / "screenshots"
    if os.environ.get("SDAR_UPDATE_SCREENSHOTS")
    else REPO / "tests" / "artifacts"
)
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]


@pytest.fixture(scope="module")
def url():
    if not (REPO / "assets" / "models" / "sdar-tiny" / "config.json").is_file():
        pytest.skip("the embedded model assets/models/sdar-tiny is not in this checkout")
    from gradio_client import Client

    from app.layout import LAUNCH_KWARGS
    from app.ui import build_app

    demo = build_app()  # what `python app.py` serves: sdar-tiny selected, ar-tiny its twin
    port = free_port()
    demo.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **LAUNCH_KWARGS
    )
    # Both models loaded before the first click: on a busy machine a load can outlast the studio's grace, and the
    # page then (rightly) asks to send again; these tests are about what follows.
    client = Client(f"http://127.0.0.1:{port}/", verbose=False)
    for name in ("assets/models/sdar-tiny", "assets/models/ar-tiny"):
        client.predict(name, api_name="/load_model")
    client.close()
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


# Records every frame a player shows (its index, masked count, text and where-line), from its data attributes.
WATCH_PLAYER = """(sel) => {
  const root = document.querySelector(sel + ' .sdar-player');
  window.sdarFrames = [];
  const record = () => window.sdarFrames.push({frame: Number(root.dataset.frame), frames: Number(root.dataset.frames),
    masked: Number(root.dataset.masked), status: root.dataset.status,
    where: root.querySelector('.sdar-where').innerText,
    fresh: root.querySelectorAll('.sdar-frame .sdar-fresh').length,
    answered: (document.querySelector('#sdar-chat-stats') || {innerText: ''}).innerText.includes('TPF')});
  if (window.sdarObserver) window.sdarObserver.disconnect();
  window.sdarObserver = new MutationObserver(record);
  window.sdarObserver.observe(root, {attributes: true, attributeFilter: ['data-frame']});
}"""


def player(page, elem_id: str) -> dict:
    """The player's state, as its data attributes say."""
    return page.evaluate(f"""() => {{ const r = document.querySelector('#{elem_id} .sdar-player');
      return {{frame: Number(r.dataset.frame), frames: Number(r.dataset.frames), masked: Number(r.dataset.masked),
              status: r.dataset.status, text: r.dataset.text || '',
              where: r.querySelector('.sdar-where').innerText}}; }}""")


def scrub(page, elem_id: str, frame: int) -> None:
    page.evaluate(f"""() => {{ const s = document.querySelector('#{elem_id} .sdar-scrub');
      s.value = '{frame}'; s.dispatchEvent(new Event('input', {{bubbles: true}})); }}""")
    page.wait_for_function(f"document.querySelector('#{elem_id} .sdar-player').dataset.frame === '{frame}'")


def set_speed(page, elem_id: str, ms: int) -> None:
    page.locator(f"#{elem_id} .sdar-speed").select_option(str(ms))


def replay_done(elem_id: str) -> str:
    return (
        f"(() => {{ const r = document.querySelector('#{elem_id} .sdar-player');"
        f" return r.dataset.status === 'done' && r.dataset.playing === '0'"
        f" && Number(r.dataset.frame) === Number(r.dataset.frames) - 1; }})()"
    )


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


def test_chat_answers_at_decode_speed_and_the_page_replays_scrubs_and_stops(page):
    """At the default settings (watch delay 120 ms): the answer and its stats arrive while the page's player is still
    replaying the denoising, with masks in several frames; Replay plays it again, Stop keeps the frame shown, the
    scrubber shows any frame; an empty Send is explained beside the box."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.locator("#sdar-examples").get_by_text("What is 47 + 38?").click()
    page.wait_for_function("document.querySelector('#sdar-message textarea').value === 'What is 47 + 38?'")
    page.evaluate(WATCH_PLAYER, "#sdar-live")
    page.locator("#sdar-send").click()
    wait_text(page, "sdar-chat-stats", "TPF")
    page.wait_for_function(replay_done("sdar-live"))
    shown = frames(page)
    assert sum(f["masked"] > 0 for f in shown) >= 3 and any(f["fresh"] for f in shown)
    assert any(re.search(r"block \d+ opens, \d+ positions masked", f["where"]) for f in shown)
    assert any(
        f["answered"] and f["frame"] < f["frames"] - 1 for f in shown
    )  # the answer came before the replay ended
    assert re.search(r"Done: step (\d+) of \1", player(page, "sdar-live")["where"])
    stats = page.locator("#sdar-chat-stats").inner_text()
    assert "NFE" in stats and "tokens/s" in stats
    bubbles = page.locator("#sdar-chatbot .message")
    assert (
        bubbles.count() >= 2
        and "Answer: 85" in bubbles.last.inner_text()
        and "▒" not in bubbles.last.inner_text()
    )

    # Replay: the same frames again, from the first (every block opening masked).
    page.evaluate(WATCH_PLAYER, "#sdar-live")
    page.locator("#sdar-live .sdar-replay").click()
    page.wait_for_function(replay_done("sdar-live"))
    again = frames(page)
    assert again[0]["frame"] == 0 and sum(f["masked"] > 0 for f in again) >= 3

    # Stop during a slower replay: it stays on the frame it shows.
    set_speed(page, "sdar-live", 500)
    page.locator("#sdar-live .sdar-replay").click()
    page.wait_for_function("Number(document.querySelector('#sdar-live .sdar-player').dataset.frame) >= 2")
    page.locator("#sdar-live .sdar-stop").click()
    stopped = player(page, "sdar-live")
    page.wait_for_timeout(1200)
    assert player(page, "sdar-live")["frame"] == stopped["frame"] < stopped["frames"] - 1

    # The scrubber: the first frame opens the first block fully masked.
    scrub(page, "sdar-live", 0)
    first = player(page, "sdar-live")
    assert first["masked"] > 0 and "opens" in first["where"] and "▒" in first["text"]
    for i in range(
        first["frames"]
    ):  # the screenshot shows a block half denoised: some committed, some masked
        scrub(page, "sdar-live", i)
        if page.evaluate(
            "(() => { const r = document.querySelector('#sdar-live .sdar-player');"
            " return Number(r.dataset.masked) > 0 && Number(r.dataset.filled) > 0; })()"
        ):
            break
    else:
        pytest.fail("no frame of the default answer shows a block half denoised")
    page.mouse.move(1, 1)
    page.screenshot(path=str(SHOTS / "chat.png"), full_page=True)

    # An empty Send is explained beside the box: no overlay, the conversation unchanged.
    shown = bubbles.count()
    page.locator("#sdar-message textarea").fill("")
    page.locator("#sdar-send").click()
    wait_text(page, "sdar-chat-note", "Type a message first.")
    page.wait_for_function(NO_ERROR_BADGE)  # the failed event's outputs settle again: nothing covers the chat
    page.wait_for_timeout(500)
    assert page.locator(".toast-body:visible").count() == 0 and bubbles.count() == shown
    assert "Answer: 85" in page.locator("#sdar-chatbot").inner_text()  # the conversation still in view


def test_the_controls_follow_the_model(page):
    """The AR twin greys out the SDAR controls with one line why; the trained blocks show beside the slider; a
    catalog model is described before any download."""
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
    pick_model(page, "JetLM/SDAR-4B-Chat")
    wait_text(page, "sdar-model-info", "needs about")
    info = page.locator("#sdar-model-info").inner_text()
    assert "4.41 B parameters" in info and "trained at block size 4" in info and "download 8.8 GB" in info
    assert "⚠️" in info or "✓" in info
    page.locator("#sdar-settings").screenshot(path=str(SHOTS / "models.png"))
    pick_model(page, "assets/models/sdar-tiny")
    wait_text(page, "sdar-model-info", "block size")


def test_the_visualizer_scrubs_the_decode_and_its_heatmap_follows(page):
    """The chat's last answer opens on its first frame (masked); a prompt of its own with long blocks and a strict
    threshold takes several steps per block; the heatmap has a row per step and marks the step shown."""
    page.get_by_role("tab", name="Denoising visualizer").click()
    opened = player(page, "sdar-vis-player")
    assert opened["frame"] == 0 and opened["masked"] > 0  # the chat's answer, at its first frame
    set_decoding(page, 8, 8, 0.99)
    page.locator("#sdar-vis-prompt textarea").fill("How many minutes are in 5 hours?")
    page.locator("#sdar-vis-run").click()
    page.wait_for_function("document.querySelector('#sdar-vis-title').innerText.includes('NFE')")
    page.wait_for_function(replay_done("sdar-vis-player"))
    heat = page.evaluate(
        "(() => { const c = document.querySelector('#sdar-vis-player .sdar-heatmap');"
        " return {steps: Number(c.dataset.steps), width: c.width, shown: Number(c.dataset.shownStep)}; })()"
    )
    n_steps = int(re.search(r"Done: step (\d+) of \1", player(page, "sdar-vis-player")["where"]).group(1))
    assert heat["steps"] == n_steps >= 3 and heat["width"] > 0 and heat["shown"] == n_steps  # a row per step
    total = player(page, "sdar-vis-player")["frames"]
    for i in range(total):  # the first frame after a step that still holds masks: a block mid-denoising
        scrub(page, "sdar-vis-player", i)
        state = player(page, "sdar-vis-player")
        if state["masked"] and "opens" not in state["where"]:
            break
    else:
        pytest.fail("no step of the decode left a position masked")
    step = int(re.search(r"step (\d+) of", state["where"]).group(1))
    assert page.evaluate("document.querySelector('#sdar-vis-player .sdar-heatmap').dataset.shownStep") == str(
        step
    )
    assert "global steps" in page.locator("#sdar-blocks").inner_text()
    shoot(page, "visualizer.png")
    set_decoding(page, 16, 16, 0.99)  # the page's defaults again


def test_the_race_runs_ar_sdar_and_the_twin(page):
    page.get_by_role("tab", name="AR vs SDAR").click()
    prompt = page.locator("#sdar-race-prompt textarea")
    assert prompt.input_value() == "What is 47 + 38?"
    prompt.fill("")  # an empty prompt is explained in the headline's place, with no overlay
    page.locator("#sdar-race").click()
    wait_text(page, "sdar-speedup", "Type a prompt first.")
    assert page.locator(".toast-body:visible").count() == 0
    prompt.fill("What is 47 + 38?")
    page.locator("#sdar-race").click()
    page.wait_for_function(
        "document.querySelector('#sdar-speedup').innerText.includes('median of 3 runs')"
        " && document.querySelector('#sdar-speedup').innerText.includes('Against the AR twin')"
    )
    for lane in ("ar", "sdar", "twin"):
        assert "done (run 3 of 3):" in page.locator(f"#sdar-lane-{lane}").inner_text()
    assert "ar-tiny" in page.locator("#sdar-lane-twin").inner_text()
    assert page.locator("#sdar-lane-sdar .sdar-discarded").count() > 0  # decoded after <|im_end|>: struck out
    page.wait_for_selector("#sdar-race-chart .js-plotly-plot .barlayer", state="attached")
    assert (
        page.locator("#sdar-race-chart .js-plotly-plot .barlayer .point").count() == 6
    )  # tokens/s + forwards
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
        assert (
            narrow.locator("#sdar-message").bounding_box()["y"] < 900
        )  # the message box on the first screen
        assert narrow.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        SHOTS.mkdir(parents=True, exist_ok=True)
        narrow.screenshot(path=str(SHOTS / "narrow.png"))
    finally:
        narrow.close()
