"""SDAR Studio, the Gradio app: UI state and rendering only. It loads models and calls
sdar_core.generate, then renders the StepEvents it reports; no model math lives here.

    registry.py    model loading cache (assets/models/, local folders, hub ids) and the model card's facts
    catalog.py     the SDAR family offered by name, with the AR models they were trained from
    downloads.py   hub downloads in a child process the studio can give up on
    exposure.py    whether a request comes from this machine's users or may come from anyone
    settings.py    the UI's decoding inputs, by name, parsed into a DecodeRequest (validated server-side)
    prompting.py   conversation -> prompt ids with the chat template
    streaming.py   the one way a shown decode runs: Lanes decoded in worker threads with a stop flag,
                   frames built and throttled in the handler's thread, then each lane's result
    studio.py      what the tabs share: registry, stop flags, a request -> its Lane
    warming.py     what the warm-up covers, and the workers that compile its kernels before Gradio imports
    scheduler.py   one decode scheduler per device: visitors' requests batched on the GPU
    budget.py      what one request may cost the device, counted in forwards
    run.py         one shown decode as a handler sees it: a scheduler Job, its Feed, the answer
    feed.py        what the page receives of a decode: compact step events
    player.py      the denoising player (a gr.HTML drawing a Feed with player.js)
    render.py      trace -> HTML frames, confidence heatmap, per-block table (pure functions)
    recording.py   a session's last generation (gr.State) and its trace files
    charts.py      sweep and GPU-benchmark figures; benchmarks.py reads benchmarks/results/<run>/results.json
    chat.py, visualizer.py, race.py   the three tabs' handlers
    examples.py    the example prompts, each with the answer the embedded model gives
    errors.py      exceptions -> readable gr.Error (the one place a decoder error becomes the user's message)
    layout.py      the page's components (gr.Blocks), by name on a Page
    ui.py          build_app(): the layout plus the wiring of every event
    launch.py      main(): `python app.py` and the `sdar-studio` command
    interpreter.py the thread switch interval the decode loop needs beside Gradio; SDAR_STALL_REPORT's watch
    deploy.py      `python -m app.deploy`: the Space's file set, uploaded with huggingface_hub
"""
