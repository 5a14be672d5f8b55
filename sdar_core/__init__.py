"""sdar_core: SDAR (Synergistic Diffusion-AutoRegression) models, loading, and block-diffusion decoding.

The model
    config.py          ModelConfig, read from a Hugging Face config.json (sdar, qwen3, sdar_moe, qwen3_moe), checked
    model.py           the Qwen3 transformer with block-causal attention (parameter names of the checkpoints)
    moe.py             the routed experts: routing, and the Triton / grouped-matmul / looped expert forms
    attention.py       block-causal masks, AttentionInputs (what one forward's attention sees) and its one dispatch
    decode_attention.py  the split-K decode attention kernel over the whole KV cache (Triton)
    in_block.py        a block-causal prefill's in-block keys merged with the causal pass, in one kernel (Triton)
    fused.py           fused residual add + RMSNorm and SiLU * up kernels (Triton; eager elsewhere)
    norm_rope.py       fused q/k RMSNorm + RoPE, optionally writing the KV cache (Triton; eager elsewhere)
    gemm.py            the skinny GEMM for one-row projections, split-K in one launch (Triton; F.linear elsewhere)
    persistent.py      a one-token MLP (norm, [gate; up], SwiGLU, down, add) as one persistent launch (Triton)
    pdl.py             programmatic dependent launch for those Triton kernels (Hopper; SDAR_PDL=0 switches it off)
    ops.py             their launchers as custom ops for torch.compile, plain calls elsewhere
    kernels.py         Kernels: the one switchboard of which of those kernels a forward takes
    kv_cache.py        the preallocated KV cache with per-block commit
Loading
    loading.py         load_pretrained / save_pretrained: safetensors, config.json and tokenizer, checked first
    template_sandbox.py  chat templates rendered with time and size limits
    prompting.py       chat prompts and stop tokens
    paths.py           where this checkout keeps its files (the embedded models)
Decoding
    decode_params.py   DecodeParams: every decoding option and its default, in one dataclass; OPTIONS for people
    schedules.py       which masked positions a denoising step commits (static, dynamic, sequential, entropy)
    sampling.py        temperature / top-k / top-p sampling and confidences
    decoding.py        generate(): block diffusion and AR decoding over a batch
    steps.py      a denoising step's device work after the forward, on fixed buffers (a graph replay on CUDA)
    runner.py          the chunk forwards: plain, static shapes and CUDA graphs, pooled per model
    warmup.py          paying the graph captures and kernel compilations before the first request
    prespawn.py        the kernel-compiling worker processes, started before torch is imported
    trace.py           StepEvent, Generation, Stats: all a reader ever gets from a generation
    device.py          the default device and dtype, and waiting for the device
Command line
    cli.py, __main__.py  `python -m sdar_core --model PATH --prompt "..."`
"""

import importlib

# The names below are imported on first use (PEP 562): `import sdar_core.prespawn` runs no torch import, so that a
# server can start its kernel-compiling workers before its own imports (sdar_core/prespawn.py).
_HOMES = {
    "ModelConfig": "config",
    "ConfigError": "config",
    "CheckpointError": "loading",
    "SDARForCausalLM": "model",
    "load_pretrained": "loading",
    "save_pretrained": "loading",
    "Generation": "trace",
    "Stats": "trace",
    "StepEvent": "trace",
    "generate": "decoding",
    "DecodeParams": "decode_params",
    "GenerationError": "decoding",
    "ContextTooLong": "decoding",
    "encode_prompt": "prompting",
    "stop_ids_for": "prompting",
}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
