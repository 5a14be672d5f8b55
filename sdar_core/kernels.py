"""Which kernels a forward takes: one frozen switchboard, given to the model by whoever runs it.

Every switch only selects among computations of the same value (the tests compare each pair): a fused Triton kernel or
the eager ops (fused.py, norm_rope.py, in_block.py, moe.route), the split-K decode attention or SDPA over the buffer
(decode_attention.py), one persistent MLP kernel or two GEMMs (persistent.py), the static-shape expert forms or the
per-expert loop (moe.py), and the attention backend of attention.py, cuBLAS or the skinny GEMM for the projections
(gemm.py). A switch that is on still needs its kernel to run where the forward runs (CUDA and Triton, no gradient
wanted): elsewhere the eager path runs whatever the switch says. Two switches are the decoder's, not the forward's:
whether a denoising step's work after the forward is replayed as a CUDA graph (steps.py), and how many blocks it may
launch before it reads the one before them.

The decoder's runner (runner.py) receives a `Kernels` from DecodeParams and passes it to every forward; its pool
keys a captured graph by it. A plain `model(ids)` (training, the tests) uses `DEFAULT_KERNELS`. The benchmarks
measure each switch against the eager kernels by building their own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

FUSIONS = (
    "norm_rope",
    "cache_write",
    "qk_rope",
    "add_norm",
    "silu_mul",
    "silu_down",
    "norm_fold",
    "routing",
)


@dataclass(frozen=True)
class Kernels:
    norm_rope: bool = True  # q/k RMSNorm + RoPE in one kernel each (norm_rope.py)
    cache_write: bool = True  # the k kernel of norm_rope also writes K and V into the KV cache
    # With norm_rope and cache_write: q's kernel and k's in one launch (norm_rope_qk_to_cache).
    qk_rope: bool = True
    add_norm: bool = True  # residual add + RMSNorm (fused.add_rms_norm)
    silu_mul: bool = True  # SiLU(gate) * up (fused.silu_mul)
    # SiLU(gate) * up formed by the down projection's skinny GEMM as it loads [gate; up] (gemm.swiglu_linear), where
    # that kernel takes the rows: one kernel fewer a layer than silu_mul's. With qk_rope, the one-token forward
    # 3% faster on an H100 (benchmarks/NOTES.md, "The tensor-core form with the weight's rows on the MMA's M").
    silu_down: bool = True
    # The residual add folded into the skinny GEMM that ends a sublayer (o_proj, down: it stores the sum and each
    # row's sums of squares per output tile) and the RMSNorm after it into the GEMM that reads the sum next (qkv,
    # gate_up, the lm_head: it normalises x as it loads it), for one row (gemm.FOLD_MAX_ROWS: a batch-1 AR step)
    # where the skinny kernel takes both: no add_norm kernel between them (gemm.add_linear, gemm.Normed;
    # benchmarks/NOTES.md, "The residual add and the norm in the GEMMs").
    norm_fold: bool = True
    routing: bool = True  # an MoE router's softmax, top-k and renormalisation (moe.route); the pairs' sort
    # Static-shape forwards (runner modes "static", "graph"): None takes the split-K decode attention wherever it
    # runs (CUDA with Triton); False gives SDPA the mask over the whole buffer (the benchmarks compare the two);
    # True where it cannot run falls back to SDPA over the filled slice, whose host read cannot be graphed.
    split_k_attention: bool | None = None
    # With the split-K decode attention: each tile's partial softmaxes merged by the last of its splits to finish
    # (decode_attention.py), not by a kernel of their own: one kernel fewer a layer. Off: its `cuda` tests passed on
    # an H200, but with rope_in_attention the `ar` forward measured 1.60 -> 1.83 ms at a 64-token prompt there
    # (benchmarks/NOTES.md, "The goals' H200 run of 2026-12-07"); each alone is not yet measured.
    merge_fold: bool = False
    # With the split-K decode attention: the queries' and the chunk's keys' RMSNorm + RoPE, and the keys' and values'
    # cache write, done by the split kernel itself (decode_attention.split_k_rope_attention), not by norm_rope's
    # kernel before it: one kernel fewer a layer. Off: with merge_fold, slower on an H200 (merge_fold's note;
    # benchmarks/NOTES.md, "Norm + RoPE in the split kernel").
    rope_in_attention: bool = False
    grouped_experts: bool = (
        True  # the static-shape expert forms where one runs (moe.Experts); False: the loop
    )
    # With norm_fold, for one token where the gemv form runs: an MoE layer's RMSNorm formed by the router's GEMM and
    # the gate/up gemv as each loads x, and the residual add by the down gemv as it stores (moe.SparseMoE.folded):
    # no norm kernel before the experts, no add + norm kernel after them. On since an H100 measured the 30B-A3B's
    # `ar` forward at 3.587 -> 3.540 ms with it (benchmarks/NOTES.md, "The MoE folds measured").
    expert_fold: bool = True
    # With expert_fold: the router's GEMM and the routing (softmax, top k) in one kernel, the last of its split-K
    # programs to arrive taking the top k (moe.gate_route): no routing kernel. On since the same H100 measured
    # 3.540 -> 3.496 ms with it (benchmarks/NOTES.md, "The MoE folds measured").
    gate_route: bool = True
    # With norm_fold and silu_down, a one-token dense MLP (the RMSNorm, [gate; up], SwiGLU, down and the residual
    # add) as one persistent launch whose down programs wait per slice of K, not for the whole [gate; up] grid
    # (persistent.py); the result is the two GEMMs' bit for bit. Off until a GPU has measured it.
    persistent_mlp: bool = False
    # One or two tokens' experts through the gemv form (moe.Experts.gemv_forward: no sort, the combine inside)
    # where the static-shape forms run on CUDA; False: the sorted Triton form for them too.
    expert_gemv: bool = True
    # The decode forward's projections through the skinny Triton GEMM (gemm.py) where it runs (one row: batch-1
    # AR steps; CUDA; no gradient); False: F.linear (cuBLAS) for every projection.
    skinny_gemm: bool = True
    # The denoising step's work after the forward (sampling, the schedule, the commit, the step record: steps.py)
    # captured as a CUDA graph in runner mode "graph" for greedy decoding; False: the same ops launched one by one.
    graphed_step: bool = True
    # Blocks the block decoder may launch before it reads the one before them (their tokens, for the stop check and
    # the StepEvents), for schedules whose steps need no host read (static): None takes 1 on CUDA (8 for blocks of
    # one token, strategy "ar") and 0 elsewhere, where a read does not wait for the device. A row that stops then
    # costs up to that many spare blocks, and a free row is offered to a joining one that many blocks later.
    read_ahead: int | None = None
    # A static or graph runner's short prefill as the plain forward padded to runner.PREFILL_PADDED tokens, one graph
    # per runner in graph mode (runner.padded_prefill), captured by the warm-up; False: every prefill launched op by
    # op. On since an H200 measured it, with in_block_kernel, at 612 -> 622 tokens/s for `ar` and 1,616 -> 2,062
    # for SDAR b16/4 at a 64-token prompt (results/h200-prefill-switches; benchmarks/NOTES.md, "The prefill"). Its
    # `cuda` tests passed there except warm_prefill's, whose fix (inference mode) has not yet run on a GPU. A plain
    # runner (the CPU's default) never pads.
    graphed_prefill: bool = True
    # A CUDA prefill of whole blocks from key 0 (no padding) through flash attention's causal pass and each block's
    # later keys (attention.block_causal_attention), no mask built; False: SDPA under the block-causal mask.
    mask_free_prefill: bool = True
    # With mask_free_prefill: each block's later keys and the merge with the causal pass in one Triton kernel
    # (in_block.py) where it runs, instead of ~0.9 ms a layer of torch ops at an 8k prompt on an H100; False: the
    # torch ops. On since its `cuda` tests passed on an H200 (with graphed_prefill, SDAR b16/4 at an 8k prompt
    # 1,348 -> 1,438 tokens/s there; benchmarks/NOTES.md, "The prefill").
    in_block_kernel: bool = True
    attention_backend: str = (
        "sdpa"  # attention.attention's backend for dense masks: "sdpa", "flash" or "eager"
    )

    def with_fusions(self, names: set[str] | str) -> Kernels:
        """These kernels with exactly `names` ("all", "none", or a set of FUSIONS) fused."""
        names = set(FUSIONS) if names == "all" else set() if names == "none" else set(names)
        if names - set(FUSIONS):
            raise ValueError(f"unknown fusions {sorted(names - set(FUSIONS))}; choose from {sorted(FUSIONS)}")
        return dataclasses.replace(self, **{name: name in names for name in FUSIONS})

    def fusions(self) -> list[str]:
        """The fusions that are on, in FUSIONS order."""
        return [name for name in FUSIONS if getattr(self, name)]


DEFAULT_KERNELS = Kernels()
