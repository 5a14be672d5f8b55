"""SDAR Studio, the Gradio app: UI state and rendering only. It loads models and calls
sdar_core.generate, then renders the StepEvents it reports; no model math lives here.

    registry.py    model loading cache (assets/models/, local folders, hub ids)
    settings.py    decoding settings, validated server-side
    prompting.py   conversation -> prompt ids with the chat template
    streaming.py   generate() in a worker thread, StepEvents through a queue, Stop
    studio.py      what the tabs share: registry, stop flags, the decode job
    render.py      trace -> HTML frames, confidence heatmap, per-block table (pure functions)
    recording.py   a session's last generation (gr.State) and its trace files
    charts.py      sweep and GPU-benchmark figures; benchmarks.py reads benchmarks/results/<run>/results.json
    chat.py, visualizer.py, race.py   the three tabs' handlers
    errors.py      exceptions -> readable gr.Error
    ui.py          the gr.Blocks layout: build_app()
"""
