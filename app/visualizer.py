"""The Denoising visualizer tab: a decode drawn step by step in the browser (the player: frame, scrubber, Replay,
Stop, speed, and the confidence heatmap under it), the per-block table, and the trace as JSON / CSV downloads.
It shows the session's last chat answer, or decodes a prompt of its own."""

from __future__ import annotations

import gradio as gr

from .errors import explained, unshown
from .feed import empty
from .prompting import DEFAULT_SYSTEM, conversation
from .recording import Recording, record
from .render import block_table, stats_markdown
from .settings import MAX_MESSAGE_CHARS, MAX_SYSTEM_CHARS, DecodeRequest, checked_text
from .studio import Studio

EMPTY = "No generation yet in this session: chat in the Chat tab, or run a prompt here."


def title_of(recording: Recording) -> str:
    return (
        f"**{recording.label}**  \n{stats_markdown(recording.stats, '' if recording.stats else '_stopped_')}"
    )


class Visualizer:
    def __init__(self, studio: Studio, page) -> None:
        self.studio, self.p = studio, page

    def show(self, recording: Recording | None) -> dict:
        """Everything the tab shows for a recording (the chat's last answer, or this tab's own run)."""
        p = self.p
        if recording is None or not recording.events:
            return {
                p.vis_title: EMPTY,
                p.vis_player: empty(EMPTY),
                p.blocks: block_table([]),
                p.trace_files: None,
            }
        files = [f for f in (recording.json_path, recording.csv_path) if f]
        feed = {
            **recording.feed,
            "pace": 0,
            "title": recording.label,
            "cursor": 0,
        }  # opens on the first frame
        return {
            p.vis_title: title_of(recording),
            p.vis_player: feed,
            p.blocks: block_table(recording.events),
            p.trace_files: files,
        }

    @staticmethod
    def checked(prompt, system, ui) -> tuple[str, str, DecodeRequest]:
        """(prompt, system prompt, request) as the decode needs them, or the error that refuses them."""
        prompt = checked_text("prompt", prompt, MAX_MESSAGE_CHARS)
        system = checked_text("system prompt", system, MAX_SYSTEM_CHARS)
        if not prompt:
            raise gr.Error("Type a prompt first.", title="Empty prompt")
        return prompt, system, DecodeRequest.from_ui(ui)

    def pending(self, prompt, system=DEFAULT_SYSTEM, **ui) -> dict:
        """The moment Run is pressed: the previous recording's frame, heatmap, scrubber, table and downloads go,
        so that nothing on the tab belongs to it while the new decode waits for the model. A prompt that will be
        refused leaves everything as it was (the run explains it in the title)."""
        p = self.p
        try:
            prompt, _, _ = self.checked(prompt, system, ui)
        except Exception:
            return {}
        waiting = "Waiting for the model…"
        return {
            p.vis_title: f"**{prompt[:80]}**  \n{waiting}",
            p.vis_player: empty(waiting, run=-1),
            p.blocks: block_table([]),
            p.trace_files: None,
        }

    def run(self, prompt, request: gr.Request, system=DEFAULT_SYSTEM, **ui):
        """Decode a prompt (one user turn after the system prompt, as the chat sends it) and show it; `ui` holds
        the decoding inputs by name (DecodeRequest). A refused prompt is explained in the title, above the player;
        the rest stays as it was."""
        try:
            yield from self._run(prompt, system, request, ui)
        except Exception as e:
            reason = explained(e)
            yield {self.p.vis_title: "⚠️ " + reason}
            raise unshown(reason) from None

    def _run(self, prompt, system, request, ui):
        p = self.p
        prompt, system, req = self.checked(prompt, system, ui)
        run = self.studio.start(
            req, conversation(system, [], prompt), self.studio.arm_stop(request), title=prompt[:80]
        )
        notes = "".join(f"  \nℹ️ {n}" for n in run.notes)
        # Everything of the previous recording goes at once: the page never shows a frame and a table that disagree.
        yield {
            p.vis_title: f"**{prompt[:80]}**  \nDecoding…{notes}",
            p.vis_player: run.feed.value(),
            p.blocks: block_table([]),
            p.trace_files: None,
        }
        for _ in run.follow():
            yield {p.vis_player: run.feed.value()}
        rec = record(prompt[:80], run)
        out = self.show(rec)
        out[p.vis_title] += notes
        out[p.vis_player] = {**run.feed.value()}  # the same run: the page keeps its replay going
        yield {**out, p.recording: rec}
