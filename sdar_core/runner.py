"""Chunk forwards for the decoder: the model run on [start, start+Q) of a batch against its KV cache.

Three modes compute the same thing:
- "plain": attention reads the cache slice [0, start+Q); shapes change every block (CPU default);
- "static": every forward reads the whole preallocated buffer under a block-causal mask and writes its
  keys/values at device indices, so shapes depend only on (B, Q) (runs anywhere; tested on CPU);
- "graph": "static" captured once per (Q, logits_from) as a CUDA graph and replayed (the GPU fast path:
  no kernel-launch overhead, no host synchronisation). Optionally the forward is torch.compile'd first
  (fused elementwise kernels).
Every forward gets one `AttentionInputs` (attention.py) built here. On CUDA with Triton a static-shape forward's
holds the chunk's `CacheQueries`: the split-K decode kernel (decode_attention.py) builds the block-causal mask
from the slot's indices and reads only the filled part of the buffer. Elsewhere it holds the [B, 1, Q, total]
mask for SDPA. The tensors a static forward reads are named (`StaticInputs`): a graph copies them in each replay.
The runner's `Kernels` (kernels.py) go to every forward it runs.
`prepare` builds a chunk's inputs once for the repeated forwards of one block's steps (a replay then copies in
its tokens alone); `run_captured` replays the decoder's own device work after the forward (steps.py) as a
graph of its own, and `held` keeps the buffers such a graph reads alive with the runner.
A chunk longer than two blocks, and every chunk of a plain runner, takes the plain path (attention over the filled
slice); so does a prefill, except that with Kernels.graphed_prefill a static or graph runner of a dense model pads a
short one to PREFILL_PADDED tokens (`padded_prefill`): in graph mode one graph per runner then replays every short
prompt. Static and graph runners are pooled per model (`RUNNER_POOL`) and reused across generate
calls of one shape.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from .attention import AttentionInputs, chunk_mask
from .decode_attention import CacheQueries, split_k_available
from .kernels import DEFAULT_KERNELS, Kernels
from .kv_cache import KVCache
from .moe import grouped_mm_available, triton_available

MODES = ("plain", "static", "graph")
BUCKET = 256  # the smallest static buffer; larger ones double (see bucket)
_POOL_SIZE = (
    32  # runners kept per model: bounds the memory held by cached buffers and graphs (the studio warms
)
# every trained block size x cache bucket, and batches come in powers of two)


def bucket(total: int, context: int) -> int:
    """The static buffer for `total` positions: BUCKET doubled until it holds them, at most the model's context
    (or `total`, if more). Doubling, not a fixed step, keeps the shapes a server meets (and captures graphs for)
    few, a handful up to any context, while the split-K attention reads only the filled part, so a roomy buffer
    costs memory (at most 2x), not time."""
    size = BUCKET
    while size < total:
        size *= 2
    return min(size, max(total, context))


# With Kernels.graphed_prefill (the default), a static or graph runner's prefill of up to this many tokens (from
# position 0, whole blocks, a dense model) runs padded to exactly this many, as one graph per runner in graph mode: an
# eager prefill is bound by the host's launches, not by the GPU
# (benchmarks/NOTES.md, "The prefill": 17-35 ms for 64 tokens on an H100, ~2.4 ms as a graph). One length, not
# buckets: at a few hundred rows a forward's time is still the weight read, and each length would be a graph to capture
# per runner (~70 ms, at the warm-up or a visitor's first request).
PREFILL_PADDED = 256
# batch x PREFILL_PADDED at most: a larger batch's prefill amortises its launches over its rows
PREFILL_ROWS = 1024


def default_mode(model) -> str:
    """CUDA graphs on CUDA, for MoE models too where a static-shape expert form runs (moe.py: the Triton kernels or
    the grouped matmul, no host read); plain otherwise."""
    if model.device.type != "cuda":
        return "plain"
    w = model.model.embed_tokens.weight
    if model.config.is_moe and not (triton_available(w) or grouped_mm_available(w)):
        return "plain"
    return "graph"


class RunnerPool:
    """Static-shape runners (buffers and captured graphs) per backbone, dropped with the model.

    Keyed by the weights' storage too: graphs replay raw device pointers, so a graph must never outlive (or
    miss a change of) the weights it was captured with; after `fuse_projections` the old runners are simply
    never hit again and age out of the bounded pool.
    """

    def __init__(self) -> None:
        self._pools: weakref.WeakKeyDictionary[torch.nn.Module, dict] = weakref.WeakKeyDictionary()

    def get(
        self, model, batch: int, total: int, block_size: int, mode: str, compile, kernels: Kernels
    ) -> ChunkRunner:
        pool = self._pools.setdefault(model.model, {})  # the backbone: an AR view of the weights shares it
        weights = tuple(
            p.data_ptr()
            for p in (
                model.model.embed_tokens.weight,
                model.lm_head.weight,
                model.model.layers[0].self_attn.q_proj.weight,
            )
        )
        key = (
            batch,
            bucket(total, model.config.max_position_embeddings),
            block_size,
            mode,
            compile,
            model.dtype,
            weights,
            model.config.model_type,
            kernels,
        )
        if key in pool:
            pool[key] = pool.pop(key)  # the most recently used last: the least recently used goes first
        else:
            if len(pool) >= _POOL_SIZE:
                pool.pop(next(iter(pool)))
            pool[key] = ChunkRunner(model, batch, total, block_size, mode, compile, kernels)
        runner = pool[key]
        runner.cache.length = 0
        return runner

    def runners(self, model) -> list[ChunkRunner]:
        """The pooled runners of this model's backbone (its AR view's too)."""
        return list(self._pools.get(model.model, {}).values())


RUNNER_POOL = RunnerPool()


_STEP_POOLS: dict[torch.device, object] = {}
# torch >= 2.7: a MemPool object counts as a user of its pool for as long as it lives
_HELD_POOLS = hasattr(getattr(torch.cuda, "MemPool", None), "use_count")


def _step_pool(device: torch.device) -> tuple:
    """The id of the memory pool the run_captured graphs of `device` share, held open for the process. torch refuses
    to capture into a pool whose graphs have all died until its allocator frees the pool (an internal assert, and a
    CUDA generator left in capture mode): every runner of the device dropped at once (a studio that replaced its
    model, a benchmark's runners) and then one new step captured would meet it. A MemPool keeps the pool's use count
    above zero; the memory of dead graphs stays in the pool, for the next captures. Older torch: a bare handle."""
    pool = _STEP_POOLS.get(device)
    if pool is None:
        try:
            with torch.cuda.device(device):
                pool = torch.cuda.MemPool() if _HELD_POOLS else None
        except RuntimeError:  # an allocator backend without pools of its own (cudaMallocAsync)
            pool = None
        _STEP_POOLS[device] = pool = pool if pool is not None else torch.cuda.graph_pool_handle()
    return pool.id if isinstance(pool, getattr(torch.cuda, "MemPool", ())) else pool


def _forward(model, *args, **kwargs) -> torch.Tensor:
    """model.forward with the model as an argument, so that a pooled runner need not keep its model alive."""
    return model.forward(*args, **kwargs)


@dataclass
class StaticInputs:
    """What a static-shape forward reads: the tensors a captured graph copies into its own each replay."""

    ids: torch.Tensor  # [B, Q]
    positions: torch.Tensor  # [B, Q] RoPE positions, counted from each row's first real token
    index: torch.Tensor  # [Q] cache indices of the chunk
    mask: torch.Tensor | None = (
        None  # [B, 1, Q, total] over the whole buffer for SDPA; None: the split-K kernel
    )

    def clone(self) -> StaticInputs:
        return StaticInputs(*(None if t is None else t.clone() for t in self.tensors()))

    def copy_(self, other: StaticInputs) -> None:
        """Copy other's tensors into these (same shapes), without waiting for the host."""
        for mine, theirs in zip(self.tensors(), other.tensors()):
            if mine is not None:
                mine.copy_(theirs, non_blocking=True)

    def tensors(self) -> list[torch.Tensor | None]:
        return [getattr(self, f.name) for f in fields(self)]


class ChunkRunner:
    def __init__(
        self,
        model,
        batch: int,
        total: int,
        block_size: int,
        mode: str,
        compile=False,
        kernels: Kernels = DEFAULT_KERNELS,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown runner mode {mode!r}; choose one of {MODES}")
        self._model = weakref.ref(model)  # the pool is keyed by the model: a strong reference would pin it
        self.dtype, self.batch, self.block_size, self.mode = model.dtype, batch, block_size, mode
        if mode != "plain":
            total = bucket(total, model.config.max_position_embeddings)
        self.total = total
        self.device = model.device
        devices = [layer.self_attn.q_proj.weight.device for layer in model.model.layers]
        self.cache = KVCache.allocate(model.config, batch, total, dtype=model.dtype, devices=devices)
        self.pad = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.index = torch.arange(total, device=self.device)  # [total] every cache index
        self.positions = self.index[None].expand(batch, -1)  # [B, total] RoPE positions (set_padding)
        self.padded = False
        self.graphs: dict[tuple[int, int], tuple] = {}
        self.prefill_graphs: dict[bool, tuple] = {}  # padded_prefill's, by whether rows are left-padded
        self._loaded: dict[tuple[int, int], StaticInputs] = {}  # per graph: the inputs its buffers hold
        self.captured: dict[tuple, torch.cuda.CUDAGraph] = {}  # run_captured's graphs
        self.buffers: dict[str, object] = {}  # tensors a caller's captured work reads and writes (see held)
        self.forward_fn = _forward  # forward_fn(model, ids, positions, ...)
        self.kernels = kernels
        split_k = kernels.split_k_attention
        self.split_k = mode != "plain" and (
            split_k if split_k is not None else split_k_available(self.device)
        )
        if compile:
            # "dynamic" (or True): one compilation for every batch and chunk size; "static": one per shape.
            self.forward_fn = torch.compile(_forward, dynamic=compile != "static", fullgraph=True)

    @property
    def model(self):
        return self._model()

    @classmethod
    def get(
        cls,
        model,
        batch: int,
        total: int,
        block_size: int,
        mode: str,
        compile=False,
        kernels: Kernels = DEFAULT_KERNELS,
    ) -> ChunkRunner:
        """A runner for this shape: a new one in plain mode, a pooled one (graphs kept) otherwise."""
        if mode == "plain":
            return cls(model, batch, total, block_size, mode, kernels=kernels)
        return RUNNER_POOL.get(model, batch, total, block_size, mode, compile, kernels)

    def held(self, name: str, make: Callable[[], object]):
        """The runner's `name` buffers, made on first use: a captured graph (run_captured) replays their addresses,
        so they live as long as the runner."""
        if name not in self.buffers:
            self.buffers[name] = make()
        return self.buffers[name]

    def set_padding(self, pad: list[int]) -> None:
        """Rows left-padded by `pad` tokens: their RoPE positions count from their first real token."""
        self.pad.copy_(torch.tensor(pad))
        self.positions = (self.index[None] - self.pad[:, None]).clamp_min(0)
        self.padded = any(pad)

    def inputs(self, ids: torch.Tensor, start: int) -> StaticInputs:
        """The chunk `ids` [B, Q] at cache positions [start, start+Q): its RoPE positions [B, Q] (counted from each
        row's first real token) and cache indices [Q]."""
        end = start + ids.shape[1]  # slices of the tables set_padding keeps: no device work per chunk
        return StaticInputs(ids, self.positions[:, start:end], self.index[start:end])

    def plain_attention(self, start: int, length: int) -> AttentionInputs:
        """The plain-mode chunk's attention over the cache slice [0, start+length)."""
        pad = self.pad if self.padded else None
        return AttentionInputs.chunk(start, length, start + length, self.block_size, pad, self.device)

    def buffer_mask(self, start: int, length: int) -> torch.Tensor:
        """The [batch, 1, Q, total] mask of a static-shape forward through SDPA over the whole buffer."""
        mask, _ = chunk_mask(start, length, self.total, self.block_size, k_start=self.pad, device=self.device)
        if self.device.type == "cuda":
            # An additive mask in the model's dtype is what the attention kernels consume: converting it
            # here, once per step, keeps one conversion per layer out of the graph.
            mask = torch.zeros(mask.shape, dtype=self.dtype, device=self.device).masked_fill_(
                ~mask, float("-inf")
            )
        return mask

    def __call__(
        self, seq: torch.Tensor, start: int, length: int, logits_from: int, prefill: bool = False
    ) -> torch.Tensor:
        """Logits [B, length - logits_from, V] of chunk seq[:, start:start+length]; its K/V go to the cache.
        `prefill`: the prompt's chunk (the decoders say so), whatever its length."""
        return self.forward(seq[:, start : start + length], start, logits_from, prefill)

    def forward(self, ids: torch.Tensor, start: int, logits_from: int, prefill: bool = False) -> torch.Tensor:
        """Logits [B, Q - logits_from, V] of the chunk `ids` [B, Q] at cache positions [start, start+Q)."""
        length = ids.shape[1]
        if prefill and self.pads_prefill(length, start, logits_from):
            return self.padded_prefill(ids)
        if self.mode == "plain" or prefill or length > 2 * self.block_size:
            # A long prefill runs once per request with a length of its own: attention over the filled slice through
            # SDPA's prebuilt kernels, neither a graph nor a kernel built for its length. A short one that cannot be
            # padded too: a prompt of one or two whole blocks would otherwise capture a graph of its own on its first
            # request (the studio's first chat of a block size paid that capture, 0.5 of a warm request's speed on an
            # H100); with Kernels.graphed_prefill, padded_prefill replays one graph per runner.
            inputs = self.inputs(ids, start)
            return self._plain(inputs.ids, inputs.positions, start, logits_from)
        inputs = self.static_inputs(ids, start)
        if self.mode == "static":
            return self.static_forward(inputs, logits_from, _forward)
        return self._replay(inputs, logits_from)

    def _plain(
        self, ids: torch.Tensor, positions: torch.Tensor, start: int, logits_from: int
    ) -> torch.Tensor:
        """The plain path's forward of the chunk `ids` at [start, start+Q): attention over the cache slice it ends."""
        return self.model(
            ids,
            positions,
            attn=self.plain_attention(start, ids.shape[1]),
            cache=self.cache.chunk(start, ids.shape[1]),
            logits_from=logits_from,
            kernels=self.kernels,
        )

    def pads_prefill(self, length: int, start: int, logits_from: int) -> bool:
        """Whether a prefill of `length` tokens takes `padded_prefill`: Kernels.graphed_prefill, a static or graph
        runner (not compiled) of a dense model, with batch x PREFILL_PADDED rows at most PREFILL_ROWS; a prefill from
        position 0 of whole blocks (its padding then lies in later blocks, which its queries do not see), at most
        PREFILL_PADDED tokens, no logits asked for."""
        return (
            self.kernels.graphed_prefill
            and self.mode != "plain"
            and self.forward_fn is _forward
            and not self.model.config.is_moe
            and self.batch * PREFILL_PADDED <= PREFILL_ROWS
            and PREFILL_PADDED <= self.total
            and start == 0
            and length <= PREFILL_PADDED
            and length % self.block_size == 0
            and logits_from == length
        )

    def padded_prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """The prefill `ids` [B, Q] at [0, Q) as the plain path's forward of PREFILL_PADDED tokens, the prompt padded:
        in graph mode the replay of the runner's prefill graph (one per runner and padding state, captured on first
        use or by `warm_prefill`), whatever Q; logits of nothing, [B, 0, V]. The padding writes keys and values past
        the prompt, which no query sees before its own forward has rewritten them (they lie in later blocks)."""
        padded = F.pad(ids, (0, PREFILL_PADDED - ids.shape[1]), value=0)
        positions = self.positions[:, :PREFILL_PADDED]
        if self.mode == "static":
            return self._plain(padded, positions, 0, PREFILL_PADDED)
        key = self.padded  # left padding builds a mask; none without it
        if key not in self.prefill_graphs:
            self.prefill_graphs[key] = self._capture_prefill(padded, positions)
        graph, bufs, out = self.prefill_graphs[key]
        bufs[0].copy_(padded, non_blocking=True)
        bufs[1].copy_(positions, non_blocking=True)
        graph.replay()
        return out

    def warm_prefill(self, filler_id: int) -> bool:
        """Capture the prefill graphs a request may replay (graph mode; both padding states for a batch), so that
        the first request pays no capture; whether there were any to capture."""
        if self.mode != "graph" or not self.pads_prefill(self.block_size, 0, self.block_size):
            return False
        with torch.inference_mode():  # the mode of every decode, in which the runner's buffers were made
            ids = torch.full((self.batch, self.block_size), filler_id, dtype=torch.long, device=self.device)
            pad = self.pad.tolist()
            for left in [0, 1] if self.batch > 1 else [0]:
                self.set_padding([left] + [0] * (self.batch - 1))
                self.padded_prefill(ids)
            self.set_padding(pad)
        return True

    def _capture_prefill(self, ids: torch.Tensor, positions: torch.Tensor):
        bufs = (ids.clone(), positions.clone())
        graph, out = self._graph(lambda: self._plain(*bufs, 0, PREFILL_PADDED))
        return graph, bufs, out

    def prepare(self, ids: torch.Tensor, start: int, logits_from: int) -> Callable[[], torch.Tensor]:
        """The forward of the chunk `ids` [B, Q] at cache positions [start, start+Q), as a call to repeat while `ids`
        changes in place (the denoising steps of a block): positions, indices and mask are built once; each call
        returns the logits of the tokens `ids` holds then (in graph mode only the tokens are copied in again)."""
        if self.mode != "graph" or ids.shape[1] > 2 * self.block_size:
            return lambda: self.forward(ids, start, logits_from)
        inputs = self.static_inputs(ids, start)
        return lambda: self._replay(inputs, logits_from)

    def static_inputs(self, ids: torch.Tensor, start: int) -> StaticInputs:
        """The chunk's ids, positions and cache indices (the split-K kernel builds the mask from the indices),
        with the mask over the whole buffer when SDPA reads it instead: the tensors a graph copies in."""
        inputs = self.inputs(ids, start)
        if not self.split_k:
            inputs.mask = self.buffer_mask(start, ids.shape[1])
        return inputs

    def static_forward(self, inputs: StaticInputs, logits_from: int = 0, forward_fn=None) -> torch.Tensor:
        """The forward of `static_inputs`, writing its K/V at the cache indices (forward_fn: default the runner's,
        compiled when asked)."""
        slot = self.cache.chunk_at(inputs.index)
        if inputs.mask is None:
            attn = AttentionInputs(cache_queries=CacheQueries(slot.index, self.block_size, self.pad))
        else:
            attn = AttentionInputs(mask=inputs.mask)
        forward_fn = forward_fn or self.forward_fn
        return forward_fn(
            self.model,
            inputs.ids,
            inputs.positions,
            attn=attn,
            cache=slot,
            logits_from=logits_from,
            kernels=self.kernels,
        )

    def _replay(self, inputs: StaticInputs, logits_from: int) -> torch.Tensor:
        key = (inputs.ids.shape[1], logits_from)
        if key not in self.graphs:
            self.graphs[key] = self._capture(inputs, logits_from)
        graph, bufs, out = self.graphs[key]
        if self._loaded.get(key) is inputs:  # the same chunk again (prepare): only its tokens changed
            bufs.ids.copy_(inputs.ids, non_blocking=True)
        else:
            bufs.copy_(inputs)
            self._loaded[key] = inputs
        graph.replay()
        return out

    def run_captured(self, key: tuple, fn: Callable[[], None]) -> None:
        """fn(): device work on tensors that outlive it (no host read, no result), run eagerly the first time under
        `key` and captured then as a CUDA graph that later calls replay (graph mode; eagerly in every call
        otherwise). The first, eager run is the work itself and the warm-up the capture needs. The graphs of every
        runner on a device share one memory pool: they run one after another on one stream, and their
        intermediates die with each replay."""
        graph = self.captured.get(key)
        if graph is not None:
            graph.replay()
            return
        fn()
        if self.mode != "graph":
            return
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=_step_pool(self.device)):
            fn()
        self.captured[key] = graph

    def _capture(self, inputs: StaticInputs, logits_from: int):
        bufs = inputs.clone()
        graph, out = self._graph(lambda: self.static_forward(bufs, logits_from))
        return graph, bufs, out

    def _graph(self, run: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """run() captured as a CUDA graph (after two warm-up calls on a side stream: compilation, lazy
        initialisations), with the tensor it returns."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm-up (and compilation) outside the capture
            for _ in range(2):
                run()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run()
        return graph, out
