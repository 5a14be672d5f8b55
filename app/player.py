"""The denoising player: a gr.HTML whose value is a Feed (app/feed.py) and whose script (player.js) draws it.

Why a gr.HTML with its own script rather than server-rendered frames or a custom component: Gradio 6's gr.HTML
runs `js_on_load` once per component and calls its `watch('value', ...)` callback whenever a handler sends a new
value, and it sends a streamed output's changes rather than the whole value; the template below never changes,
so Gradio leaves the player's DOM alone and the script owns it. The live view, the watch replay (its speed,
Replay, Stop, the scrubber) and the heatmap are then drawn in the browser from the step events: the server sends
each step once and sleeps for nothing. A custom component would do the same with a build step (npm) that a Space
and this repository's CI would have to run.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from .feed import empty

SCRIPT = (Path(__file__).parent / "player.js").read_text()

CSS = """
.sdar-player {font-size: 14px}
.sdar-head {font-size: 12px; color: #6b7280; margin-bottom: 4px; min-height: 1.2em}
.sdar-title {font-weight: 600; color: #374151}
.sdar-frame {font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 14px; line-height: 2.0;
  white-space: pre-wrap; word-break: break-word; padding: 8px; border-radius: 8px; border: 1px solid #d1d5db;
  min-height: 3em; background: #fff; color: #111827}
.sdar-tok {border-radius: 3px; padding: 1px 1px; margin: 0 1px; color: #111827}
.sdar-mask {background: #374151 !important; color: #9ca3af; padding: 1px 3px}
.sdar-fresh {outline: 2px solid #2563eb}
.sdar-end {font-size: 11px; color: #6b7280; font-style: italic; margin: 0 3px; white-space: nowrap}
.sdar-discarded {opacity: 0.35; text-decoration: line-through}
.sdar-block {border: 1px dashed #2563eb; border-radius: 5px; padding: 3px 2px; margin-left: 2px; background: #eff6ff}
.sdar-quiet {color: #6b7280}
.sdar-controls {display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin-top: 6px; font-size: 13px}
.sdar-controls button {border: 1px solid #d1d5db; border-radius: 6px; padding: 2px 10px; background: #f9fafb;
  cursor: pointer; color: #111827}
.sdar-controls button:hover {background: #eef2ff}
.sdar-scrub {flex: 1 1 160px; min-width: 120px}
.sdar-count, .sdar-speed-label {color: #4b5563}
.sdar-note {font-size: 12px; color: #6b7280; margin-top: 4px}
.sdar-note:empty {display: none}
.sdar-legend {font-size: 12px; color: #6b7280; margin-top: 4px}
.sdar-legend .sdar-tok {font-size: 12px}
.sdar-heat {margin-top: 10px; overflow-x: auto}
.sdar-heat-title {font-size: 12px; color: #4b5563; margin-bottom: 4px}
.sdar-heatmap {image-rendering: pixelated; border: 1px solid #e5e7eb; max-width: 100%}
"""


class DenoisePlayer(gr.HTML):
    """A decode drawn in the browser from its Feed. `heatmap=True` adds the confidence heatmap under the frame."""

    def __init__(self, message: str = "", *, heatmap: bool = False, **kwargs) -> None:
        super().__init__(
            value=empty(message),
            html_template='<div class="sdar-player"></div>',
            css_template=CSS,
            js_on_load=SCRIPT,
            heatmap=heatmap,
            **kwargs,
        )

    def api_info(self) -> dict:
        return {"type": "object", "description": "a decode's compact step events (app/feed.py)"}

    def example_payload(self):
        return empty("")

    def example_value(self):
        return empty("")
