"""Chunk forwards for the decoder: the model run on [start, start+Q) of a batch against its KV cache.

Three modes compute the same thing:
- "plain": attention reads the cache slice [0, start+Q); shapes change every block (CPU default);
- "static": every forward reads the whole preallocated buffer under a block-causal mask and writes its
  keys/values at device indices, so shapes depend only on (B, Q) (runs anywhere; tested on CPU);
- "graph": "static" captured once per (Q, logits_from) as a CUDA graph and replayed (the GPU fast path:
  no kernel-launch overhead, no host synchronisation). Optionally the forward is torch.compile'd first
  (fused elementwise kernels).
Graph runners are kept on the model and reused across generate calls of the same batch shape.
"""
from __future__ import annotations

import torch

from .attention import block_causal_mask
from .decode_attention import CacheQueries
from .kv_cache import KVCache

MODES = ("plain", "static", "graph")
_BUCKET = 256  # static buffers are sized in multiples of this, so close prompt lengths share graphs


def default_mode(model) -> str:
    """CUDA graphs on CUDA for dense models (MoE routing is data-dependent), plain otherwise."""
    if model.device.type == "cuda" and not model.config.is_moe:
        return "graph"
    return "plain"


class ChunkRunner:
    # Static-shape forwards hand attention a CacheQueries (split-K decode kernel, decode_attention.py) instead of
    # an additive mask over the whole buffer. Off by default until the decode loop's redesign integrates it.
    split_k_attention: bool = False

    def __init__(self, model, batch: int, total: int, block_size: int, mode: str, compile: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown runner mode {mode!r}; choose one of {MODES}")
        self.model, self.batch, self.block_size, self.mode = model, batch, block_size, mode
        if mode != "plain":
            total = -(-total // _BUCKET) * _BUCKET
        self.total = total
        self.device = model.device
        devices = [layer.self_attn.q_proj.weight.device for layer in model.model.layers]
        self.cache = KVCache.allocate(model.config, batch, total, dtype=model.dtype, devices=devices)
        self.pad = torch.zeros(batch, dtype=torch.long, device=self.device)
        self.padded = False
        self.graphs: dict[tuple[int, int], tuple] = {}
        self.forward_fn = model.forward
        self.split_k = ChunkRunner.split_k_attention
        if compile:
            # "dynamic" (or True): one compilation for every batch and chunk size; "static": one per shape.
            self.forward_fn = torch.compile(model.forward, dynamic=compile != "static", fullgraph=True)

    @classmethod
    def get(cls, model, batch: int, total: int, block_size: int, mode: str, compile: bool = False) -> "ChunkRunner":
        """A runner for this shape: a new one in plain mode, a pooled one (graphs kept) otherwise."""
        if mode == "plain":
            return cls(model, batch, total, block_size, mode)
        # The pool lives on the shared backbone, keyed by the weights' storage: graphs replay raw device
        # pointers, so a graph must never outlive (or miss a change of) the weights it was captured with.
        pool = model.model.__dict__.setdefault("_runner_pool", {})
        weights = tuple(p.data_ptr() for p in (model.model.embed_tokens.weight, model.lm_head.weight,
                                               model.model.layers[0].self_attn.q_proj.weight))
        key = (batch, -(-total // _BUCKET) * _BUCKET, block_size, mode, compile, model.dtype, weights,
               model.config.model_type, cls.split_k_attention)
        if key not in pool:
            if len(pool) >= 8:  # bound the memory held by cached buffers and graphs
                pool.pop(next(iter(pool)))
            pool[key] = cls(model, batch, total, block_size, mode, compile)
        runner = pool[key]
        runner.cache.length = 0
        return runner

    def set_padding(self, pad: list[int]) -> None:
        self.pad.copy_(torch.tensor(pad))
        self.padded = any(pad)

    def _inputs(self, seq: torch.Tensor, start: int, length: int):
        idx = torch.arange(start, start + length, device=self.device)
        positions = (idx[None] - self.pad[:, None]).clamp_min(0)  # [B, Q] RoPE positions of each row
        return seq[:, start: start + length], positions, idx

    def buffer_mask(self, idx: torch.Tensor) -> torch.Tensor:
        """The [batch, 1, Q, total] mask of a static-shape forward over the whole cache buffer for queries at idx."""
        if self.split_k:
            return CacheQueries(idx, self.block_size, self.pad)
        mask = block_causal_mask(idx, self.total, self.block_size, k_start=self.pad if self.padded else None)
        if mask.shape[0] != self.batch:
            mask = mask.expand(self.batch, -1, -1, -1)
        if self.device.type == "cuda":
            # An additive mask in the model's dtype is what the attention kernels consume: converting it
            # here, once per step, keeps one conversion per layer out of the graph.
            mask = torch.zeros(mask.shape, dtype=self.model.dtype, device=self.device).masked_fill_(~mask, float("-inf"))
        return mask

    def __call__(self, seq: torch.Tensor, start: int, length: int, logits_from: int) -> torch.Tensor:
        """Logits [B, length - logits_from, V] of chunk seq[:, start:start+length]; its K/V go to the cache."""
        ids, positions, idx = self._inputs(seq, start, length)
        L = self.block_size
        if self.mode == "plain":
            mask = block_causal_mask(idx, start + length, L, k_start=self.pad) if self.padded else None
            return self.model(ids, positions, mask=mask, cache=self.cache, cache_start=start,
                              logits_from=logits_from, block_size=L)
        mask = self.buffer_mask(idx)
        if self.mode == "static" or length > 2 * L:  # a prefill runs once: no graph, no compilation
            return self.model(ids, positions, mask=mask, cache=self.cache, cache_index=idx,
                              logits_from=logits_from, block_size=L)
        return self._replay(ids, positions, idx, mask, logits_from)

    def _replay(self, ids, positions, idx, mask, logits_from: int) -> torch.Tensor:
        key = (ids.shape[1], logits_from)
        if key not in self.graphs:
            self.graphs[key] = self._capture(ids, positions, idx, mask, logits_from)
        graph, bufs, out = self.graphs[key]
        for buf, value in zip(bufs, (ids, positions, idx, mask)):
            if isinstance(buf, torch.Tensor):  # a CacheQueries reads the index buffer and self.pad in place
                buf.copy_(value, non_blocking=True)
        graph.replay()
        return out

    def _capture(self, ids, positions, idx, mask, logits_from: int):
        bufs = [t.clone() for t in (ids, positions, idx)]
        bufs.append(CacheQueries(bufs[2], mask.block_size, self.pad) if isinstance(mask, CacheQueries) else mask.clone())

        def run():
            return self.forward_fn(bufs[0], bufs[1], mask=bufs[3], cache=self.cache, cache_index=bufs[2],
                                   logits_from=logits_from, block_size=self.block_size)

        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):  # warm-up (and compilation) outside the capture
            for _ in range(2):
                run()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run()
        return graph, bufs, out
