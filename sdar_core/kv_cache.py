"""A preallocated key/value cache with per-block commit (paper §3.2, Appendix B.2).

SDAR's cache is the one an AR model keeps: the keys and values of every *final* token. The block in
flight is recomputed at each denoising step; its keys and values are written into the buffer just past
the committed length (scratch space that the next step overwrites) so that attention reads one
contiguous slice and no step concatenates the whole context. `commit(n)` makes the first n scratch
positions part of the cache once their block is final.
"""
from __future__ import annotations

import torch


class KVCache:
    """k[layer], v[layer]: [B, H_kv, T_max, D], one pair per layer, each on its layer's device."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor]) -> None:
        self.k, self.v = k, v
        self.length = 0  # committed positions (the same for every row: rows are block-aligned)

    @classmethod
    def allocate(cls, config, batch_size: int, max_len: int, *, dtype: torch.dtype,
                 devices: list[torch.device]) -> "KVCache":
        """Buffers for `max_len` positions; `devices[i]` is layer i's device (big-model dispatch)."""
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        k = [torch.zeros(shape, dtype=dtype, device=d) for d in devices]
        v = [torch.zeros(shape, dtype=dtype, device=d) for d in devices]
        return cls(k, v)

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v [B, H_kv, Q, D] at positions start..start+Q; return keys and values [0, start+Q)."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; a write up to {end} does not fit")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def write_at(self, layer: int, index: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Store k, v [B, H_kv, Q, D] at the cache positions `index` [Q] (a device tensor, so that a CUDA
        graph can replay the write anywhere); return the whole buffers [B, H_kv, T_max, D]."""
        self.k[layer].index_copy_(2, index, k)
        self.v[layer].index_copy_(2, index, v)
        return self.k[layer], self.v[layer]

    def commit(self, n: int) -> None:
        """The next n positions after the committed length become final."""
        if self.length + n > self.max_len:
            raise ValueError(f"cannot commit {n} positions past {self.length} in a cache of {self.max_len}")
        self.length += n
