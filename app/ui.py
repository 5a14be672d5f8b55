"""The studio's event wiring: build_app() lays the page out (layout.py) and connects every event to its
handler, with an explicit api_name for gradio_client. The decoding inputs reach handlers by name
(`inputs_kwargs`), so the API's parameter names are DecodeRequest's field names."""

from __future__ import annotations

import secrets
from pathlib import Path

import gradio as gr

from .catalog import NAMES, spec_for, spec_markdown
from .chat import Chat
from .errors import explained, refuse_unreadable_inputs, unshown
from .layout import STRATEGY_INFO, Page, layout
from .race import Race
from .registry import DEFAULT_MODEL, ModelRegistry, ModelUnavailable, default_missing, missing_default_message
from .render import model_markdown
from .settings import MAX_BLOCK_LENGTH
from .studio import Studio, ar_note, replica_registries, untrained_block_note
from .visualizer import Visualizer

try:  # On Hugging Face ZeroGPU Spaces, generation handlers borrow a GPU for their duration.
    import spaces

    gpu = spaces.GPU
except ImportError:

    def gpu(fn):
        return fn


# Decoding handlers: many at once. A handler only waits for its job on the device's scheduler (scheduler.py), which
# batches the jobs waiting together; it holds no device and sleeps for no display (the page replays in the browser).
GENERATION = {"concurrency_limit": 32, "concurrency_id": "model"}
RACE = {"concurrency_limit": 2, "concurrency_id": "race"}  # timed lanes take the device lock for themselves
LOADING = {"concurrency_limit": 2, "concurrency_id": "load"}
LIGHT = {"concurrency_limit": None}  # rendering only: never waits behind a decode or a load
QUEUE = {"default_concurrency_limit": 1, "max_size": 64}  # beyond: gradio's "queue is full, try again"
PRIVATE = {"api_visibility": "private"}


def describe_model(studio: Studio, name) -> str:
    """The model card if it is loaded; its progress while it loads; otherwise whether it can be loaded here
    (never whether a server path exists: the registry's messages are the same either way)."""
    m = studio.registry.cached(name)
    if m is not None:
        return model_markdown(m.summary, name=m.name, context=m.context, stop_tokens=m.stop_token_names)
    if name is None or (isinstance(name, str) and not name.strip()):
        return "Pick a model or type a folder path / hub id."
    loading = studio.registry.loading(name)
    if loading is not None:
        return loading_markdown(studio.registry, loading)
    try:
        studio.registry.key(name)
    except ModelUnavailable as e:
        return "⚠️ " + str(e)
    spec = spec_for(name)
    if spec is not None:
        return spec_markdown(spec) + "  \n" + studio.registry.availability(spec)
    return f"**{name.strip()}** — loads on first use (or press *Load*)."


def loading_markdown(registry: ModelRegistry, loading) -> str:
    progress = registry.progress(loading)
    return f"⏳ Loading **{loading.name}**… {loading.seconds:.0f} s" + (f" · {progress}" if progress else "")


def steps_for_block(block_length, steps, sdar: bool = True, reason: str | None = None):
    """The steps slider ends at the block length; a block of one position has one step (the slider, which needs
    a range, stays on 1, greyed out). `reason`: why an AR model does not use it."""
    try:
        b = max(1, min(int(block_length), MAX_BLOCK_LENGTH))
        steps = int(steps or b)
    except (TypeError, ValueError):
        return gr.skip()
    if b == 1:
        return gr.Slider(
            maximum=2, value=1, interactive=False, info=reason or "a block of one position: one step"
        )
    return gr.Slider(maximum=b, value=min(steps, b), interactive=sdar, info=reason)


def threshold_for_strategy(strategy, sdar: bool = True):
    """The threshold only steers the dynamic schedule: greyed out for the others (and for an AR model)."""
    if not sdar:
        return gr.Slider(interactive=False, info="not used by an autoregressive model")
    return gr.Slider(
        interactive=strategy == "dynamic",
        info=None if strategy == "dynamic" else f"not used by the {strategy} schedule",
    )


def block_info(config) -> str | None:
    """What the block slider says beside itself: the block sizes the model was trained at."""
    if config is None or not config.is_sdar:
        return None
    sizes = config.trained_blocks
    return f"trained at block size{'s' if len(sizes) > 1 else ''} {', '.join(map(str, sizes))}"


def decoding_note(config, name, block) -> str:
    """The line under the decoding controls: why they are greyed out (an AR model), or an untrained block."""
    if config is None:
        return ""
    shown = Path(str(name).strip()).name or str(name)
    if not config.is_sdar:
        return "ℹ️ " + ar_note(shown)
    try:
        block = int(block)
    except (TypeError, ValueError):
        return ""
    return "" if block in config.trained_blocks else "⚠️ " + untrained_block_note(shown, config, block)


def controls_for_model(studio: Studio, name, block_length, strategy, steps=None):
    """The decoding controls as the model needs them: an AR model greys out block, steps, strategy and threshold;
    an SDAR model shows its trained block sizes beside the slider, and the steps slider ends at the block length.
    Outputs: block, steps, strategy, threshold, note."""
    config = studio.registry.peek_config(name)
    sdar = config is None or config.is_sdar
    reason = None if sdar else "not used by an autoregressive model"
    return (
        gr.Slider(interactive=sdar, info=block_info(config) if sdar else reason),
        steps_for_block(block_length, steps, sdar, reason),
        gr.Radio(interactive=sdar, info=STRATEGY_INFO if sdar else reason),
        threshold_for_strategy(strategy, sdar),
        decoding_note(config, name, block_length),
    )


def seed_for_temperature(temperature):
    """The seed matters only when sampling: greyed out at temperature 0."""
    sampling = isinstance(temperature, (int, float)) and temperature > 0
    return gr.Number(
        interactive=sampling,
        info="the same seed gives the same answer" if sampling else "used when temperature > 0",
    )


def random_seed() -> int:
    return secrets.randbelow(2**31)


def build_app(default_model: str = DEFAULT_MODEL, registry: ModelRegistry | None = None) -> gr.Blocks:
    """The studio as a gr.Blocks (launch it with `**layout.LAUNCH_KWARGS` for the theme)."""
    registry = registry or ModelRegistry()
    studio = Studio(registry=registry, replicas=replica_registries(registry))
    choices = studio.registry.available()
    if default_model not in choices:
        choices = [default_model] + choices
    choices += [n for n in NAMES if n not in choices]  # the SDAR family and their AR peers
    missing = missing_default_message() if default_missing(default_model) else None
    demo, page = layout(default_model, choices, describe_model(studio, default_model), missing)
    with demo:
        describe = _wire_model(page, studio, demo)
        vis = Visualizer(studio, page)
        _wire_chat(page, Chat(studio, page), vis, describe)
        _wire_visualizer(page, vis, describe)
        _wire_race(page, Race(studio), demo)
    refuse_unreadable_inputs(demo)
    demo.queue(**QUEUE)
    return demo


def _wire_model(p: Page, studio: Studio, demo: gr.Blocks):
    """Load / describe the model, and keep the steps slider within the block length. Returns `describe`."""

    def load_model(name, request: gr.Request):
        """Start (or join) the model's load in the background and show its progress until it is done; a model
        that cannot be loaded here says why, in the same place."""
        try:
            loading, stop = studio.registry.start(name), studio.arm_stop(request)
            while not loading.done.wait(0.5):
                if stop.is_set():
                    yield (
                        loading_markdown(studio.registry, loading)
                        + " (stopped waiting; it goes on in the background)"
                    )
                    return
                yield loading_markdown(studio.registry, loading)
            m = loading.outcome()
        except Exception as e:
            reason = explained(e)
            yield "⚠️ " + reason
            raise unshown(reason) from None
        yield model_markdown(m.summary, name=m.name, context=m.context, stop_tokens=m.stop_token_names)

    def describe(name):
        return describe_model(studio, name)

    load = p.load_btn.click(gpu(load_model), p.model_box, p.model_info, api_name="load_model", **LOADING)
    load.failure(
        lambda: gr.skip(), None, p.model_info, **PRIVATE, **LIGHT
    )  # the reason stays, without a badge
    p.model_box.change(describe, p.model_box, p.model_info, api_name="describe_model", **LIGHT)
    block_length, steps = p.decode["block_length"], p.decode["steps"]
    p.decode["strategy"].change(
        threshold_for_strategy, p.decode["strategy"], p.decode["threshold"], **PRIVATE, **LIGHT
    )
    controls = [block_length, steps, p.decode["strategy"], p.decode["threshold"], p.decode_note]

    def fit_controls(name, block, strategy, steps):
        return controls_for_model(studio, name, block, strategy, steps)

    # The page's steps slider ends at the block length; the component's own range stays wide so that API calls
    # (which skip page events) are checked by DecodeSettings, with the block length they send.
    for trigger in (p.model_box.change, block_length.change, demo.load):
        trigger(
            fit_controls,
            [p.model_box, block_length, p.decode["strategy"], steps],
            controls,
            **PRIVATE,
            **LIGHT,
        )
    temperature = p.decode["temperature"]
    for trigger in (temperature.change, demo.load):
        trigger(seed_for_temperature, temperature, p.decode["seed"], **PRIVATE, **LIGHT)
    p.new_seed.click(random_seed, None, p.decode["seed"], **PRIVATE, **LIGHT)
    return describe


def settled():
    """The chat's shown outputs left as they are (an event that ends clears its outputs' failed status)."""
    return [gr.skip()] * 5


def _wire_chat(p: Page, chat: Chat, vis: Visualizer, describe) -> None:
    decode = {**p.decode, "pace_ms": p.pace}
    outputs = [p.chatbot, p.history, p.message, p.live, p.chat_stats, p.recording, p.chat_note]
    shown = [p.chatbot, p.message, p.live, p.chat_stats, p.chat_note]
    vis_outputs = [p.vis_title, p.vis_player, p.blocks, p.trace_files]
    answers = []
    for trigger, name in ((p.send.click, "chat"), (p.message.submit, "chat_submit")):
        answer = trigger(
            gpu(chat.respond),
            [p.message, p.history, p.system],
            outputs,
            inputs_kwargs=decode,
            api_name=name,
            api_visibility="public" if name == "chat" else "private",
            **GENERATION,
        )
        # A refused message already shows its reason in the message area; the error that tells API clients also
        # marks the outputs as failed: settle them again, so that the conversation stays in view, unchanged.
        answer.failure(settled, None, shown, **PRIVATE, **LIGHT)
        answers.append(answer)
        answer.then(vis.show, p.recording, vis_outputs, **PRIVATE, **LIGHT).then(
            describe, p.model_box, p.model_info, **PRIVATE, **LIGHT
        )
    p.stop.click(chat.studio.stop, None, None, api_name="stop", queue=False)
    # Clear ends everything the chat shows: the answer being decoded (stopped, its stream cancelled) and the
    # page's replay (the player starts over on the cleared value).
    p.clear.click(
        chat.clear,
        None,
        [p.chatbot, p.history, p.message, p.live, p.chat_stats, p.chat_note],
        api_name="clear",
        cancels=answers,
        **LIGHT,
    )
    # A note about the previous model's decode (an untrained block, a missing template) goes with it.
    p.model_box.change(lambda: "", None, p.chat_note, **PRIVATE, **LIGHT)


def _wire_visualizer(p: Page, vis: Visualizer, describe) -> None:
    decode = {**p.decode, "pace_ms": p.pace, "system": p.system}
    outputs = [p.recording, p.vis_title, p.vis_player, p.blocks, p.trace_files]
    # The previous recording leaves the tab the moment Run is pressed (a light event), not when the decode starts.
    run = p.vis_run.click(
        vis.pending, [p.vis_prompt], outputs[1:], inputs_kwargs=decode, **PRIVATE, **LIGHT
    ).then(gpu(vis.run), [p.vis_prompt], outputs, inputs_kwargs=decode, api_name="visualize", **GENERATION)
    run.then(describe, p.model_box, p.model_info, **PRIVATE, **LIGHT)
    submit = p.vis_prompt.submit(
        vis.pending, [p.vis_prompt], outputs[1:], inputs_kwargs=decode, **PRIVATE, **LIGHT
    ).then(gpu(vis.run), [p.vis_prompt], outputs, inputs_kwargs=decode, **PRIVATE, **GENERATION)
    for event in (run, submit):  # the reason stays in the title; the outputs settle again
        event.failure(lambda: [gr.skip()] * 4, None, outputs[1:], **PRIVATE, **LIGHT)


def _wire_race(p: Page, race: Race, demo: gr.Blocks) -> None:
    decode = {
        **p.decode,
        "mode": p.race_mode,
        "use_twin": p.use_twin,
        "repeats": p.race_repeats,
        "system": p.system,
    }
    outputs = [*p.lanes, p.race_table, p.race_speedup, p.race_chart]
    run = p.race_btn.click(
        gpu(race.race), [p.race_prompt], outputs, inputs_kwargs=decode, api_name="race", **RACE
    )
    run.failure(
        lambda: [gr.skip()] * 6, None, outputs, **PRIVATE, **LIGHT
    )  # the reason stays in the headline
    p.race_stop.click(race.studio.stop, None, None, **PRIVATE, queue=False)
    sweep_outputs = [p.sweep_note, p.sweep_tpf, p.sweep_speed, p.sweep_df]
    sweep = p.sweep_btn.click(
        gpu(race.sweep),
        [p.race_prompt, p.model_box, p.sweep_blocks, p.sweep_thrs, p.sweep_tokens, p.system],
        sweep_outputs,
        api_name="sweep",
        **RACE,
    )
    sweep.failure(
        lambda: [gr.skip()] * 3, None, sweep_outputs[1:], **PRIVATE, **LIGHT
    )  # the reason stays above
    gpu_outputs = [p.gpu_plot, p.gpu_df, p.gpu_notes, p.gpu_run]
    p.gpu_refresh.click(race.gpu_results, p.gpu_run, gpu_outputs, api_name="gpu_results", **LIGHT)
    p.gpu_run.input(race.gpu_results, p.gpu_run, gpu_outputs, **PRIVATE, **LIGHT)
    demo.load(race.gpu_results, None, gpu_outputs, **PRIVATE, **LIGHT)
