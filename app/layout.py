"""The studio's page: a settings column (model, decoding) beside three tabs (Chat, Denoising visualizer,
AR vs SDAR). Components only; ui.py wires their events. Every component a handler reads or writes is kept
on a `Page` under its name, and the decoding inputs under their DecodeRequest field names (`page.decode`)."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from . import examples
from .chat import LIVE_PLACEHOLDER
from .player import DenoisePlayer
from .prompting import DEFAULT_SYSTEM
from .race import DEFAULT_REPEATS, PARALLEL, REPEATS, SEQUENTIAL, SWEEP_BLOCKS, SWEEP_THRESHOLDS, lane_html
from .render import block_table
from .run import WATCH_MS
from .settings import (
    MAX_BLOCK_LENGTH,
    MAX_MESSAGE_CHARS,
    MAX_NEW_TOKENS,
    MAX_SYSTEM_CHARS,
    SDAR_STRATEGIES,
    DecodeSettings,
)
from .visualizer import EMPTY

# The system's own fonts: complete faces on every platform (the theme's bundled web font lacked most glyphs, so
# bold labels mixed two fonts), nothing fetched. Labels are quiet text above their control, not coloured chips.
SANS = [
    "ui-sans-serif",
    "system-ui",
    "-apple-system",
    "Segoe UI",
    "Roboto",
    "Helvetica Neue",
    "Arial",
    "Noto Sans",
    "Liberation Sans",
    "sans-serif",
]
MONO = [
    "ui-monospace",
    "SFMono-Regular",
    "Menlo",
    "Consolas",
    "Liberation Mono",
    "DejaVu Sans Mono",
    "monospace",
]
THEME = gr.themes.Soft(primary_hue="blue", neutral_hue="slate", font=SANS, font_mono=MONO).set(
    block_label_background_fill="transparent",
    block_label_background_fill_dark="transparent",
    block_label_text_color="*neutral_600",
    block_label_text_color_dark="*neutral_300",
    block_label_text_weight="500",
    block_label_border_width="0px",
    block_label_shadow="none",
    block_title_text_weight="500",
    block_title_text_color="*neutral_700",
    block_title_background_fill="transparent",
    block_title_padding="0",
    block_label_padding="0 0 4px 0",
    section_header_text_weight="500",
    button_large_text_weight="500",
    button_small_text_weight="500",
)
STRATEGY_INFO = (
    "how a step picks the positions it commits · static: the same number every step · dynamic: every "
    "position whose confidence passes the threshold (at least the static number) · sequential: left "
    "to right · entropy: the positions the model is least uncertain about"
)
CSS = """
#sdar-header h1 {margin-bottom: 0}
.sdar-lane {min-height: 160px}
.sdar-table {overflow-x: auto; max-width: 100%}
footer {display: none !important}
/* A narrow screen stacks the columns: the chat first, the settings under it. */
@media (max-width: 720px) {
  #sdar-workspace {order: 1}
  #sdar-settings {order: 2}
  #sdar-header p {font-size: 13px; margin: 4px 0}
}
"""
SESSIONS_KEPT = 1000  # browser or API sessions whose state (conversation, last recording) the server keeps
LAUNCH_KWARGS = {"theme": THEME, "css": CSS, "state_session_capacity": SESSIONS_KEPT}
INTRO = (
    "# SDAR Studio\nWatch a **block-diffusion** language model (SDAR: Synergistic Diffusion-AutoRegression) "
    "decode: autoregressive across blocks, parallel denoising inside each block. Chat with it, replay every "
    "denoising step, and race it against one-token-per-forward AR decoding on the same weights.\n\n"
    "The default model, **sdar-tiny**, is a 14M-parameter demo that this project trained in 14 GPU-minutes on "
    "generated arithmetic and 40 MB of English text: it gets worked sums, unit conversions and sequences right "
    "(93% of held-out sums), and writes fluent nonsense about almost anything else. The examples are questions "
    "it answers correctly; a real SDAR checkpoint can be loaded on a GPU."
)
# Prompts the embedded sdar-tiny answers correctly at the default settings (app/examples.py, checked by a test).
CHAT_EXAMPLES = examples.prompts(examples.CHAT)
VIS_EXAMPLES = examples.prompts(examples.VISUALIZER)
RACE_PROMPT = examples.SUM.prompt
RACE_EXAMPLES = examples.prompts(examples.RACE)
SWEEP_DEFAULT_BLOCKS = [4, 8, 16]
DEFAULTS = DecodeSettings()  # the page opens on the decoding settings the examples are checked at
SWEEP_DEFAULT_THRESHOLDS = [0.95, 0.9, 0.8, 0.7]


class NumberChoices(gr.CheckboxGroup):
    """A CheckboxGroup of numbers whose API schema says numbers. Gradio's own lists them as strings (and
    gradio_client prints any `enum` as quoted strings), then refuses a string: the choices are numbers. One
    const per choice renders as `Literal[2] | Literal[4]`. The page draws it as a plain CheckboxGroup."""

    is_template = True

    def api_info(self) -> dict:
        json_type = {int: "integer", float: "number"}
        items = [{"const": value, "type": json_type[type(value)]} for _, value in self.choices]
        return {"items": {"anyOf": items}, "title": "Checkbox Group", "type": "array"}


class Page(SimpleNamespace):
    """The components of the page, by name (attributes set by the section builders below)."""


def layout(default_model: str, choices: list[str], model_info: str, missing_model: str | None) -> tuple:
    """(the gr.Blocks, its Page). `missing_model`: the warning shown when the default model is absent."""
    p = Page()
    with gr.Blocks(title="SDAR Studio") as demo:
        gr.Markdown(INTRO, elem_id="sdar-header")
        gr.Markdown("⚠️ " + (missing_model or ""), visible=bool(missing_model), elem_id="sdar-missing-model")
        p.history = gr.State([])  # the conversation, as {"role", "content": str} messages
        p.recording = gr.State(None)  # the session's last generation (app.recording.Recording)
        with gr.Row(equal_height=False, elem_id="sdar-main"):
            with gr.Column(scale=1, min_width=290, elem_id="sdar-settings"):
                _settings_column(p, default_model, choices, model_info)
            with gr.Column(scale=3, elem_id="sdar-workspace"):
                with gr.Tabs():
                    with gr.Tab("Chat", id="chat"):
                        _chat_tab(p)
                    with gr.Tab("Denoising visualizer", id="visualizer"):
                        _visualizer_tab(p)
                    with gr.Tab("AR vs SDAR", id="race"):
                        _race_tab(p)
    return demo, p


def _settings_column(p: Page, default_model: str, choices: list[str], model_info: str) -> None:
    p.model_box = gr.Dropdown(
        choices=choices,
        value=default_model,
        allow_custom_value=True,
        label="Model: a folder under assets/models/, any local folder, or a hub id",
        elem_id="sdar-model",
    )
    p.load_btn = gr.Button("Load", size="sm")
    p.model_info = gr.Markdown(model_info, elem_id="sdar-model-info")
    with gr.Accordion("System prompt (sent by every tab)", open=False, elem_id="sdar-system-prompt"):
        p.system = gr.Textbox(
            value=DEFAULT_SYSTEM,
            show_label=False,
            lines=2,
            max_length=MAX_SYSTEM_CHARS,
            elem_id="sdar-system",
        )
    with gr.Accordion("Decoding", open=True):
        block = gr.Slider(
            1,
            MAX_BLOCK_LENGTH,
            value=DEFAULTS.block_length,
            step=1,
            label="Block length",
            elem_id="sdar-block-length",
        )
        p.decode_note = gr.Markdown(
            elem_id="sdar-decode-note"
        )  # an untrained block; why controls are greyed out
        p.decode = {  # DecodeRequest's field names -> their components, in the API's order
            "model_name": p.model_box,
            "block_length": block,
            "steps": gr.Slider(
                1,
                MAX_BLOCK_LENGTH,
                value=DEFAULTS.steps,
                step=1,
                label="Denoising steps per block (at most the block length)",
                elem_id="sdar-steps",
            ),
            "strategy": gr.Radio(
                list(SDAR_STRATEGIES),
                value=DEFAULTS.strategy,
                label="Unmasking strategy",
                info=STRATEGY_INFO,
                elem_id="sdar-strategy",
            ),
            "threshold": gr.Slider(
                0.01,
                1.0,
                value=DEFAULTS.threshold,
                step=0.01,
                label="Confidence threshold (dynamic)",
                elem_id="sdar-threshold",
            ),
            "temperature": gr.Slider(
                0.0,
                2.0,
                value=DEFAULTS.temperature,
                step=0.05,
                label="Temperature (0 = greedy)",
                elem_id="sdar-temperature",
            ),
            "top_p": gr.Slider(0.05, 1.0, value=DEFAULTS.top_p, step=0.05, label="Top-p"),
            "max_new_tokens": gr.Slider(
                1,
                MAX_NEW_TOKENS,
                value=DEFAULTS.max_new_tokens,
                step=1,
                label="Max new tokens",
                elem_id="sdar-max-new-tokens",
            ),
            "seed": gr.Number(
                value=DEFAULTS.seed,
                precision=0,
                label="Seed",
                info="used when temperature > 0",
                elem_id="sdar-seed",
            ),
        }
        p.new_seed = gr.Button("New random seed", size="sm", elem_id="sdar-new-seed")
        p.pace = gr.Slider(
            0,
            500,
            value=WATCH_MS,
            step=10,
            label="Watch: delay per frame (ms)",
            info="the answer decodes at full speed; your browser then replays it block by block at "
            "this pace (0: show each step as it arrives)",
            elem_id="sdar-pace",
        )


def _chat_tab(p: Page) -> None:
    p.chatbot = gr.Chatbot(
        label="Chat",
        height=360,
        elem_id="sdar-chatbot",
        placeholder="Ask something: the answer is denoised block by block.",
    )
    # The message box takes the tab's full width; the buttons sit under it, sized to their words.
    p.message = gr.Textbox(
        placeholder="Your message (Enter sends)",
        show_label=False,
        elem_id="sdar-message",
        lines=1,
        max_lines=6,
        max_length=MAX_MESSAGE_CHARS,
    )
    with gr.Row(elem_id="sdar-chat-buttons"):
        p.send = gr.Button("Send", variant="primary", scale=0, min_width=110, elem_id="sdar-send")
        p.stop = gr.Button("Stop", variant="stop", scale=0, min_width=90, elem_id="sdar-stop")
        p.clear = gr.Button("Clear", scale=0, min_width=90, elem_id="sdar-clear")
    p.chat_note = gr.Markdown(elem_id="sdar-chat-note")  # errors and notes, in place: never over the chat
    gr.Examples(CHAT_EXAMPLES, inputs=p.message, label="Examples", elem_id="sdar-examples")
    p.live = DenoisePlayer(LIVE_PLACEHOLDER, label="Block being denoised", elem_id="sdar-live")
    p.chat_stats = gr.Markdown(elem_id="sdar-chat-stats")


def _visualizer_tab(p: Page) -> None:
    with gr.Row():
        p.vis_prompt = gr.Textbox(
            placeholder="A prompt to decode here (or chat first)",
            show_label=False,
            scale=5,
            elem_id="sdar-vis-prompt",
            max_length=MAX_MESSAGE_CHARS,
        )
        p.vis_run = gr.Button("Run", variant="primary", scale=1, elem_id="sdar-vis-run")
    gr.Examples(VIS_EXAMPLES, inputs=p.vis_prompt, label="Examples")
    p.vis_title = gr.Markdown(EMPTY, elem_id="sdar-vis-title")
    p.vis_player = DenoisePlayer(EMPTY, heatmap=True, elem_id="sdar-vis-player")
    p.blocks = gr.DataFrame(
        block_table([]),
        label="Per block: steps used and tokens per step",
        interactive=False,
        elem_id="sdar-blocks",
        elem_classes="sdar-table",
    )
    p.trace_files = gr.File(label="Trace (JSON, CSV)", file_count="multiple", interactive=False)


def _race_tab(p: Page) -> None:
    p.race_prompt = gr.Textbox(
        value=RACE_PROMPT, label="Prompt", elem_id="sdar-race-prompt", max_length=MAX_MESSAGE_CHARS
    )
    gr.Examples(RACE_EXAMPLES, inputs=p.race_prompt, label="Examples")
    with gr.Row():
        p.race_mode = gr.Radio([SEQUENTIAL, PARALLEL], value=SEQUENTIAL, label="Run", scale=3)
        p.race_repeats = gr.Slider(
            REPEATS.lo,
            REPEATS.hi,
            value=DEFAULT_REPEATS,
            step=1,
            scale=2,
            label="Timed runs per lane",
            info="after an untimed warm-up; median shown",
            elem_id="sdar-race-repeats",
        )
        p.use_twin = gr.Checkbox(value=True, label="Include the AR twin when there is one", scale=2)
        p.race_btn = gr.Button("Race", variant="primary", scale=1, elem_id="sdar-race")
        p.race_stop = gr.Button("Stop", variant="stop", scale=1)
    with gr.Row(equal_height=True, elem_id="sdar-race-lanes"):
        p.lanes = [
            gr.HTML(lane_html(title), elem_classes="sdar-lane", elem_id=f"sdar-lane-{name}")
            for name, title in (("ar", "AR on the same weights"), ("sdar", "SDAR"), ("twin", "AR twin"))
        ]
    p.race_speedup = gr.Markdown(elem_id="sdar-speedup")
    p.race_chart = gr.Plot(label="tokens/s and forwards per lane", elem_id="sdar-race-chart")
    p.race_table = gr.DataFrame(
        label="Runs", interactive=False, elem_id="sdar-race-table", elem_classes="sdar-table"
    )
    with gr.Accordion("Sweep: block length × threshold (paper Figures 3-4)", open=False):
        _sweep(p)
    with gr.Accordion("GPU measurements (benchmarks/results/)", open=False):
        p.gpu_run = gr.Dropdown([], label="Run (GPU · date · what ran · file)", elem_id="sdar-gpu-run")
        p.gpu_plot = gr.Plot(label="tokens/s vs batch size", elem_id="sdar-gpu-chart")
        p.gpu_notes = gr.Markdown()
        p.gpu_df = gr.DataFrame(interactive=False, elem_id="sdar-gpu-table", elem_classes="sdar-table")
        p.gpu_refresh = gr.Button("Reload the measurements", size="sm")


def _sweep(p: Page) -> None:
    gr.Markdown(
        "Dynamic decoding of the prompt above for each block length and threshold (steps = block length), "
        "and AR once. Read TPF beside *answer ends*: TPF rises with the block and the looser threshold while "
        "the answer can fall apart (sdar-tiny was trained at blocks 1-16; at 16 with a low threshold its "
        "sums go wrong more often)."
    )
    with gr.Row():
        p.sweep_blocks = NumberChoices(list(SWEEP_BLOCKS), value=SWEEP_DEFAULT_BLOCKS, label="Block lengths")
        p.sweep_thrs = NumberChoices(
            list(SWEEP_THRESHOLDS),
            value=SWEEP_DEFAULT_THRESHOLDS,
            label="Thresholds (dynamic, steps = block length)",
        )
        p.sweep_tokens = gr.Slider(8, 256, value=64, step=8, label="New tokens per run")
    p.sweep_btn = gr.Button("Run the sweep", elem_id="sdar-sweep")
    p.sweep_note = gr.Markdown(elem_id="sdar-sweep-note")  # why a sweep stopped or was refused, in place
    with gr.Row():
        p.sweep_tpf = gr.Plot(label="TPF", elem_id="sdar-sweep-tpf")
        p.sweep_speed = gr.Plot(label="tokens/s", elem_id="sdar-sweep-speed")
    p.sweep_df = gr.DataFrame(label="Sweep", interactive=False, elem_classes="sdar-table")
