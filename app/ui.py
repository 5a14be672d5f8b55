"""The studio's layout: a settings column (model, decoding) beside three tabs (Chat, Denoising visualizer,
AR vs SDAR), and the wiring of every event with an explicit api_name for gradio_client."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from .chat import LIVE_PLACEHOLDER, Chat
from .errors import shows_errors
from .race import PARALLEL, SEQUENTIAL, SWEEP_BLOCKS, SWEEP_THRESHOLDS, Race, lane_html
from .registry import DEFAULT_MODEL, ModelRegistry, default_missing, missing_default_message, resolve_name
from .render import block_table, confidence_heatmap, model_markdown, placeholder_html
from .settings import MAX_BLOCK_LENGTH, MAX_NEW_TOKENS, SDAR_STRATEGIES
from .studio import Studio
from .visualizer import EMPTY, Visualizer, show

try:  # On Hugging Face ZeroGPU Spaces, generation handlers borrow a GPU for their duration.
    import spaces

    gpu = spaces.GPU
except ImportError:
    def gpu(fn):
        return fn

# Fonts that ship with gradio (served by the app itself): the page fetches nothing from the internet.
THEME = gr.themes.Soft(primary_hue="blue", neutral_hue="slate",
                       font=[gr.themes.GoogleFont("IBM Plex Sans"), "ui-sans-serif", "system-ui", "sans-serif"],
                       font_mono=[gr.themes.GoogleFont("IBM Plex Mono"), "ui-monospace", "Consolas", "monospace"])
CSS = """
#sdar-header h1 {margin-bottom: 0}
.sdar-lane {min-height: 160px}
footer {display: none !important}
"""
LAUNCH_KWARGS = {"theme": THEME, "css": CSS}
INTRO = ("# SDAR Studio\nWatch a **block-diffusion** language model (SDAR: Synergistic Diffusion-AutoRegression) "
         "decode: autoregressive across blocks, parallel denoising inside each block. Chat with it, replay every "
         "denoising step, and race it against one-token-per-forward AR decoding on the same weights.")
# Prompts the embedded sdar-tiny answers well (worked arithmetic, unit conversions, sequences) or at least
# gamely (definitions, Python): it was trained in minutes on a small corpus, mostly generated arithmetic.
CHAT_EXAMPLES = ["What is 47 + 38?", "How many minutes are in 5 hours?", "What comes next: 3, 7, 11, 15, 19, ?",
                 "Define the word harbor.", "What does a Python list comprehension do?"]
VIS_EXAMPLES = ["How many minutes are in 5 hours?", "What is 305 - 178?", "Define the word harbor."]
RACE_PROMPT = "What is 47 + 38?"
RACE_EXAMPLES = ["What is 47 + 38?", "What is 305 - 178?", "How many minutes are in 5 hours?"]
SWEEP_DEFAULT_BLOCKS = [4, 8, 16]
SWEEP_DEFAULT_THRESHOLDS = [0.95, 0.9, 0.8, 0.7]
GENERATION = {"concurrency_limit": 1, "concurrency_id": "model"}  # one model, one device: one decode at a time
LIGHT = {"concurrency_limit": None}  # rendering only: never waits behind a decode


def describe_model(studio: Studio, name: str) -> str:
    """The model card if it is loaded; otherwise where it would come from."""
    name = (name or "").strip()
    m = studio.registry.cached(name)
    if m is not None:
        return model_markdown(m.summary, name=m.name, context=m.context, stop_tokens=m.stop_token_names)
    if not name:
        return "Pick a model or type a folder path / hub id."
    if default_missing(name):
        return "⚠️ " + missing_default_message()
    where = "local folder" if Path(resolve_name(name)).exists() else "hub id (fetched on first use)"
    return f"**{name}** — {where}; loads on first use (or press *Load*)."


def build_app(default_model: str = DEFAULT_MODEL, registry: ModelRegistry | None = None) -> gr.Blocks:
    """The studio as a gr.Blocks (launch it with `**LAUNCH_KWARGS` for the theme)."""
    studio = Studio(registry=registry or ModelRegistry())
    chat, vis, race = Chat(studio), Visualizer(studio), Race(studio)

    @shows_errors
    def load_model(name):
        m = studio.registry.get(name)
        return model_markdown(m.summary, name=m.name, context=m.context, stop_tokens=m.stop_token_names)

    def steps_for_block(block_length, steps):
        try:
            b = max(1, min(int(block_length), MAX_BLOCK_LENGTH))
        except (TypeError, ValueError):
            return gr.skip()
        return gr.Slider(maximum=b, value=min(int(steps or b), b))

    choices = studio.registry.available()
    if default_model not in choices:
        choices = [default_model] + choices

    with gr.Blocks(title="SDAR Studio") as demo:
        gr.Markdown(INTRO, elem_id="sdar-header")
        gr.Markdown("⚠️ " + missing_default_message(), visible=default_missing(default_model),
                    elem_id="sdar-missing-model")
        history = gr.State([])  # the conversation, as {"role", "content": str} messages
        recording = gr.State(None)  # the session's last generation (app.recording.Recording)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=290):
                model_box = gr.Dropdown(choices=choices, value=default_model, allow_custom_value=True,
                                        label="Model: a folder under assets/models/, any local folder, or a hub id",
                                        elem_id="sdar-model")
                load_btn = gr.Button("Load", size="sm")
                model_info = gr.Markdown(describe_model(studio, default_model), elem_id="sdar-model-info")
                with gr.Accordion("Decoding", open=True):
                    block_length = gr.Slider(1, MAX_BLOCK_LENGTH, value=4, step=1, label="Block length",
                                             elem_id="sdar-block-length")
                    steps = gr.Slider(1, MAX_BLOCK_LENGTH, value=4, step=1, label="Denoising steps per block (at most the block length)",
                                      elem_id="sdar-steps")
                    strategy = gr.Radio(list(SDAR_STRATEGIES), value="dynamic", label="Unmasking strategy")
                    threshold = gr.Slider(0.01, 1.0, value=0.9, step=0.01, label="Confidence threshold (dynamic)",
                                          elem_id="sdar-threshold")
                    temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)")
                    top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")
                    max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=128, step=1, label="Max new tokens",
                                               elem_id="sdar-max-new-tokens")
                    seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                    pace = gr.Slider(0, 500, value=0, step=10, label="Live view: delay per step (ms, display only)",
                                     elem_id="sdar-pace")
            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Chat", id="chat"):
                        chatbot = gr.Chatbot(label="Chat", height=360, elem_id="sdar-chatbot",
                                             placeholder="Ask something: the answer is denoised block by block.")
                        with gr.Row():
                            message = gr.Textbox(placeholder="Your message", show_label=False, scale=5,
                                                 elem_id="sdar-message", lines=1, max_lines=6)
                            send = gr.Button("Send", variant="primary", scale=1, elem_id="sdar-send")
                            stop = gr.Button("Stop", variant="stop", scale=1, elem_id="sdar-stop")
                            clear = gr.Button("Clear", scale=1, elem_id="sdar-clear")
                        gr.Examples(CHAT_EXAMPLES, inputs=message, label="Examples", elem_id="sdar-examples")
                        with gr.Accordion("System prompt", open=False):
                            system = gr.Textbox(value="You are a helpful assistant.", show_label=False, lines=2)
                        live = gr.HTML(placeholder_html(LIVE_PLACEHOLDER), label="Block in flight",
                                       elem_id="sdar-live")
                        chat_stats = gr.Markdown(elem_id="sdar-chat-stats")
                    with gr.Tab("Denoising visualizer", id="visualizer"):
                        with gr.Row():
                            vis_prompt = gr.Textbox(placeholder="A prompt to decode here (or chat first)",
                                                    show_label=False, scale=5, elem_id="sdar-vis-prompt")
                            vis_run = gr.Button("Run", variant="primary", scale=1, elem_id="sdar-vis-run")
                        gr.Examples(VIS_EXAMPLES, inputs=vis_prompt, label="Examples")
                        vis_title = gr.Markdown(EMPTY, elem_id="sdar-vis-title")
                        vis_frame = gr.HTML(placeholder_html(EMPTY), elem_id="sdar-vis-frame")
                        with gr.Row():
                            vis_step = gr.Slider(0, 1, value=0, step=1, label="Step", scale=5, elem_id="sdar-vis-step")
                            play = gr.Button("▶ Play", scale=1, elem_id="sdar-play")
                            pause = gr.Button("Pause", scale=1)
                        timer = gr.Timer(0.25, active=False)
                        heatmap = gr.Plot(confidence_heatmap([]), label="Confidence heatmap", elem_id="sdar-heatmap")
                        blocks = gr.DataFrame(block_table([]), label="Per block: steps used and tokens per step",
                                              interactive=False, elem_id="sdar-blocks")
                        trace_files = gr.File(label="Trace (JSON, CSV)", file_count="multiple", interactive=False)
                    with gr.Tab("AR vs SDAR", id="race"):
                        race_prompt = gr.Textbox(value=RACE_PROMPT, label="Prompt", elem_id="sdar-race-prompt")
                        gr.Examples(RACE_EXAMPLES, inputs=race_prompt, label="Examples")
                        with gr.Row():
                            race_mode = gr.Radio([SEQUENTIAL, PARALLEL], value=SEQUENTIAL, label="Run",
                                                 scale=3)
                            use_twin = gr.Checkbox(value=True, label="Include the AR twin when there is one", scale=2)
                            race_btn = gr.Button("Race", variant="primary", scale=1, elem_id="sdar-race")
                            race_stop = gr.Button("Stop", variant="stop", scale=1)
                        with gr.Row(equal_height=True):
                            lane_ar = gr.HTML(lane_html("AR on the same weights"), elem_classes="sdar-lane",
                                              elem_id="sdar-lane-ar")
                            lane_sdar = gr.HTML(lane_html("SDAR"), elem_classes="sdar-lane", elem_id="sdar-lane-sdar")
                            lane_twin = gr.HTML(lane_html("AR twin"), elem_classes="sdar-lane", elem_id="sdar-lane-twin")
                        race_speedup = gr.Markdown(elem_id="sdar-speedup")
                        race_table = gr.DataFrame(label="Runs", interactive=False, elem_id="sdar-race-table")
                        with gr.Accordion("Sweep: block length × threshold (paper Figures 3-4)", open=False):
                            gr.Markdown("Dynamic decoding of the prompt above for each block length and threshold "
                                        "(steps = block length), and AR once. Read TPF beside *answer ends*: past "
                                        "the block size a model was trained with (4 for sdar-tiny), TPF can still "
                                        "rise while the answer falls apart.")
                            with gr.Row():
                                sweep_blocks = gr.CheckboxGroup(list(SWEEP_BLOCKS), value=SWEEP_DEFAULT_BLOCKS,
                                                                label="Block lengths")
                                sweep_thrs = gr.CheckboxGroup(list(SWEEP_THRESHOLDS), value=SWEEP_DEFAULT_THRESHOLDS,
                                                              label="Thresholds (dynamic, steps = block length)")
                                sweep_tokens = gr.Slider(8, 256, value=64, step=8, label="New tokens per run")
                            sweep_btn = gr.Button("Run the sweep", elem_id="sdar-sweep")
                            with gr.Row():
                                sweep_tpf = gr.Plot(label="TPF", elem_id="sdar-sweep-tpf")
                                sweep_speed = gr.Plot(label="tokens/s", elem_id="sdar-sweep-speed")
                            sweep_df = gr.DataFrame(label="Sweep", interactive=False)
                        with gr.Accordion("GPU measurements (benchmarks/results/)", open=False):
                            gpu_plot = gr.Plot(label="tokens/s vs batch size")
                            gpu_notes = gr.Markdown()
                            gpu_df = gr.DataFrame(interactive=False)
                            gpu_refresh = gr.Button("Reload the measurements", size="sm")

        decode_inputs = [model_box, block_length, steps, strategy, threshold, temperature, top_p, max_new_tokens, seed]
        vis_outputs = [vis_title, vis_frame, vis_step, heatmap, blocks, trace_files]

        # Model
        load_btn.click(gpu(load_model), model_box, model_info, api_name="load_model", **GENERATION)
        def describe(name):
            return describe_model(studio, name)

        model_box.change(describe, model_box, model_info, api_name="describe_model", **LIGHT)
        block_length.change(steps_for_block, [block_length, steps], steps, api_visibility="private", **LIGHT)
        # The page's steps slider ends at the block length; its initial range stays wide so that API calls
        # (which skip page events) are checked by DecodeSettings, with the block length they send.
        demo.load(steps_for_block, [block_length, steps], steps, api_visibility="private", **LIGHT)

        # Chat
        chat_inputs = [message, history, system] + decode_inputs + [pace]
        chat_outputs = [chatbot, history, message, live, chat_stats, recording]
        for trigger, name in ((send.click, "chat"), (message.submit, "chat_submit")):
            trigger(gpu(chat.respond), chat_inputs, chat_outputs, api_name=name,
                    api_visibility="public" if name == "chat" else "private", **GENERATION
                    ).then(show, recording, vis_outputs, api_visibility="private", **LIGHT
                    ).then(describe, model_box, model_info, api_visibility="private", **LIGHT)
        stop.click(chat.stop, None, None, api_name="stop", queue=False)
        clear.click(chat.clear, None, [chatbot, history, message, live, chat_stats], api_name="clear", **LIGHT)

        # Visualizer
        vis_inputs = [vis_prompt] + decode_inputs + [pace]
        vis_run.click(gpu(vis.run), vis_inputs, [recording] + vis_outputs, api_name="visualize", **GENERATION
                      ).then(describe, model_box, model_info, api_visibility="private", **LIGHT)
        vis_prompt.submit(gpu(vis.run), vis_inputs, [recording] + vis_outputs, api_visibility="private",
                          **GENERATION)
        vis_step.input(vis.frame, [vis_step, recording], vis_frame, api_name="replay_frame", **LIGHT)
        play.click(vis.play, [vis_step, recording], [vis_step, vis_frame, timer], api_visibility="private", **LIGHT)
        pause.click(vis.pause, None, timer, api_visibility="private", **LIGHT)
        timer.tick(vis.tick, [vis_step, recording], [vis_step, vis_frame, timer], api_visibility="private", **LIGHT)

        # AR vs SDAR
        race_btn.click(gpu(race.race), [race_prompt] + decode_inputs + [race_mode, use_twin],
                       [lane_ar, lane_sdar, lane_twin, race_table, race_speedup], api_name="race", **GENERATION)
        race_stop.click(chat.stop, None, None, api_visibility="private", queue=False)
        sweep_btn.click(gpu(race.sweep), [race_prompt, model_box, sweep_blocks, sweep_thrs, sweep_tokens],
                        [sweep_tpf, sweep_speed, sweep_df], api_name="sweep", **GENERATION)
        gpu_refresh.click(race.gpu_results, None, [gpu_plot, gpu_df, gpu_notes], api_name="gpu_results", **LIGHT)
        demo.load(race.gpu_results, None, [gpu_plot, gpu_df, gpu_notes], api_visibility="private", **LIGHT)

    demo.queue(default_concurrency_limit=1)
    return demo
