"""Measurements, one program per module (`python -m benchmarks.NAME`):

    bench.py             decode speed: our AR mode and SDAR block decoding against transformers
    moe.py               one MoE layer's expert forms, and the MoE rows of bench
    decode_attention.py  the split-K decode attention against SDPA and flex_attention
    gemm.py              each projection shape's matmul: cuBLAS against the skinny GEMM, with and without PDL
    profile_decode.py    where a decode step's time goes
    profile_forward.py   a graphed forward's GPU time by kernel class
    goals.py             the decode forward's goals table from a run's committed folders (CPU; nothing measured)
    registers.py         registers and programs an SM of the kernels whose switches trade them for bytes in flight
                         (built for Hopper on the CPU, no GPU)
    prefill.py           a prompt's prefill: its wall time against its kernels', the block-causal attention's forms
    evaluate.py          the embedded models' accuracy, loss and samples (the tests reproduce its committed files)
    latency.py           what the app's user waits for on a CPU
    throughput.py        training throughput of the AR and SDAR objectives
    multi_gpu.py         training on two GPUs: DDP, FSDP, resume
    startup.py           a server's start, cold and on a restart
    studio.py            the studio end to end, through gradio_client and plain HTTP (a crowd, its split)
    first_request.py     a server's first request of each shape after the warm-up, against a warm one
    joining.py           visitors arriving while a batch decodes: joining it against waiting for the next
    interpreter.py       what the decode loop pays for sharing the interpreter with Gradio (CPU)
    crowded_decode.py    a decode beside threads running Python, its step graphed and op by op (GPU; tiny on the CPU)
    soak.py              many visitors using the studio at once, through its public API
    fairness.py          the wait of a fresh visitor's chat behind maximal races
    mutation.py          mutation testing of the core invariants
    common.py            what they share: model shapes, random models, bandwidth, graph timing, the machine
    table.py             the console table each prints last

Programs, not library code: each prints a table and writes JSON/CSV with the machine it ran on (results/ holds the
committed runs). They stand on sdar_core and training; nothing imports them but the tests.
"""
