"""A preallocated key/value cache with per-block commit (paper §3.2, Appendix B.2).

SDAR's cache is the one an AR model keeps: the keys and values of every *final* token. The block in
flight is recomputed at each denoising step; its keys and values are written into the buffer just past
the committed length (scratch space that the next step overwrites) so that attention reads one
contiguous slice and no step concatenates the whole context. `commit(n)` makes the first n scratch
positions part of the cache once their block is final.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class KVCache:
    """k[layer], v[layer]: [B, H_kv, T_max, D], one pair per layer, each on its layer's device."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor]) -> None:
        self.k, self.v = k, v
        self.length = 0  # committed positions (the same for every row: rows are block-aligned)

    @classmethod
    def allocate(
        cls, config, batch_size: int, max_len: int, *, dtype: torch.dtype, devices: list[torch.device]
    ) -> KVCache:
        """Buffers for `max_len` positions; `devices[i]` is layer i's device (big-model dispatch)."""
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        k = [torch.zeros(shape, dtype=dtype, device=d) for d in devices]
        v = [torch.zeros(shape, dtype=dtype, device=d) for d in devices]
        return cls(k, v)

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def chunk(self, start: int, length: int) -> CacheSlot:
        """A chunk at cache positions start..start+length whose attention reads the keys [0, start+length)."""
        index = torch.arange(start, start + length, device=self.k[0].device)
        return CacheSlot(self, index, start + length)

    def chunk_at(self, index: torch.Tensor) -> CacheSlot:
        """A chunk at cache positions `index` [Q] whose attention reads the whole buffer (static shapes, so a
        CUDA graph can replay the same write anywhere: the caller's mask hides what is not visible)."""
        return CacheSlot(self, index, self.max_len)

    def commit(self, n: int) -> None:
        """The next n positions after the committed length become final."""
        if self.length + n > self.max_len:
            raise ValueError(f"cannot commit {n} positions past {self.length} in a cache of {self.max_len}")
        self.length += n


@dataclass(frozen=True)
class CacheSlot:
    """Where one forward writes its chunk's keys and values, and which cache positions its attention reads.

    The one write protocol of the attention layers: `write` stores at device indices (a copy, so contiguous and
    scattered writes give the same numbers) and returns the keys and values [0, keys).
    """

    cache: KVCache
    index: torch.Tensor  # [Q] cache positions of the chunk
    keys: int  # attention reads cache positions [0, keys)

    @property
    def start(self) -> int:
        """Cache position of the chunk's first query when the chunk ends the visible keys (`KVCache.chunk`)."""
        return self.keys - self.index.shape[0]

    def buffers(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layer's key and value buffers [B, H_kv, T_max, D] and the chunk's cache positions on their device,
        for a writer that stores into them itself (norm_rope_to_cache)."""
        k_buf, v_buf = self.cache.k[layer], self.cache.v[layer]
        if self.keys > k_buf.shape[2]:
            raise ValueError(
                f"KV cache holds {k_buf.shape[2]} positions; a chunk up to {self.keys} does not fit"
            )
        index = self.index if self.index.device == k_buf.device else self.index.to(k_buf.device)
        return k_buf, v_buf, index

    def visible(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's keys and values that the chunk's attention reads: [B, H_kv, keys, D]."""
        return self.cache.k[layer][:, :, : self.keys], self.cache.v[layer][:, :, : self.keys]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, H_kv, Q, D]; return the layer's keys and values [B, H_kv, keys, D]."""
        k_buf, v_buf, index = self.buffers(layer)
        k_buf.index_copy_(2, index, k)
        v_buf.index_copy_(2, index, v)
        return self.visible(layer)
