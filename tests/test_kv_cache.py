"""The KV cache (sdar_core/kv_cache.py): where a chunk writes, what its attention reads, what commit allows.

Checked against plain Python bookkeeping: a dict position -> value per layer, filled by hand.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from sdar_core.kv_cache import KVCache

CONFIG = SimpleNamespace(num_key_value_heads=2, head_dim=3)


def cache(batch: int = 2, max_len: int = 10, layers: int = 2) -> KVCache:
    return KVCache.allocate(
        CONFIG, batch, max_len, dtype=torch.float64, devices=[torch.device("cpu")] * layers
    )


def chunk_values(seed: int, q: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(
        batch,
        CONFIG.num_key_value_heads,
        q,
        CONFIG.head_dim,
        generator=torch.Generator().manual_seed(seed),
        dtype=torch.float64,
    )


def test_allocate_makes_zeroed_buffers_per_layer_of_the_cache_shape():
    c = cache(batch=3, max_len=7, layers=4)
    assert len(c.k) == len(c.v) == 4 and c.length == 0 and c.max_len == 7
    for buf in (*c.k, *c.v):
        assert buf.shape == (3, 2, 7, 3) and buf.dtype == torch.float64 and not buf.any()
    assert len({id(b) for b in (*c.k, *c.v)}) == 8  # no buffer shared between layers or between k and v


def test_chunk_reads_the_keys_up_to_its_end_and_starts_where_asked():
    c = cache()
    slot = c.chunk(3, 4)
    assert slot.index.tolist() == [3, 4, 5, 6] and slot.keys == 7 and slot.start == 3
    slot_at = c.chunk_at(torch.tensor([5, 6]))
    assert slot_at.index.tolist() == [5, 6] and slot_at.keys == c.max_len


def test_writes_land_at_their_positions_and_reads_return_the_visible_prefix():
    c = cache()
    written = {layer: {} for layer in range(2)}  # layer -> position -> (k, v) [B, H, D]
    for layer in range(2):
        for start, length, seed in [(0, 4, 1), (4, 3, 2), (2, 3, 3)]:  # the last overwrites 2..4
            k, v = chunk_values(10 * layer + seed, length), chunk_values(100 + 10 * layer + seed, length)
            keys, values = c.chunk(start, length).write(layer, k, v)
            for i in range(length):
                written[layer][start + i] = (k[:, :, i], v[:, :, i])
            assert keys.shape == values.shape == (2, 2, start + length, 3)
            for pos in range(start + length):
                assert torch.equal(keys[:, :, pos], written[layer][pos][0])
                assert torch.equal(values[:, :, pos], written[layer][pos][1])
    assert not c.k[0][:, :, 7:].any()  # nothing written past the last chunk


def test_scattered_write_equals_contiguous_write_and_reads_the_whole_buffer():
    a, b = cache(), cache()
    k, v = chunk_values(0, 3), chunk_values(1, 3)
    a.chunk(4, 3).write(1, k, v)
    keys, values = b.chunk_at(torch.tensor([4, 5, 6])).write(1, k, v)
    assert torch.equal(a.k[1], b.k[1]) and torch.equal(a.v[1], b.v[1])
    assert keys.shape[2] == values.shape[2] == b.max_len
    assert not b.k[0].any()  # the other layer untouched


def test_a_chunk_past_the_buffer_is_refused_naming_both_sizes():
    c = cache(max_len=6)
    with pytest.raises(ValueError, match="KV cache holds 6 positions; a chunk up to 8 does not fit"):
        c.chunk(4, 4).write(0, chunk_values(0, 4), chunk_values(1, 4))
    keys, _ = c.chunk(2, 4).write(
        0, chunk_values(0, 4), chunk_values(1, 4)
    )  # ending at the last position fits
    assert keys.shape[2] == 6


def test_commit_counts_final_positions_up_to_the_buffer_and_refuses_more():
    c = cache(max_len=6)
    c.commit(4)
    c.commit(2)
    assert c.length == 6
    with pytest.raises(ValueError, match="cannot commit 1 positions past 6 in a cache of 6"):
        c.commit(1)
    assert c.length == 6


def test_layers_live_on_their_own_devices_and_chunks_index_on_the_first():
    """Big-model dispatch puts layers on different devices; "meta" stands in for a second device on the CPU."""
    c = KVCache.allocate(
        CONFIG, 1, 6, dtype=torch.float32, devices=[torch.device("cpu"), torch.device("meta")]
    )
    assert [b.device.type for b in c.k] == [b.device.type for b in c.v] == ["cpu", "meta"]
    slot = c.chunk(2, 2)
    assert slot.index.device.type == "cpu"
    keys, values = slot.write(1, torch.ones(1, 2, 2, 3, device="meta"), torch.ones(1, 2, 2, 3, device="meta"))
    assert keys.device.type == values.device.type == "meta" and keys.shape == (1, 2, 4, 3)
    on_meta = KVCache.allocate(CONFIG, 1, 6, dtype=torch.float32, devices=[torch.device("meta")])
    assert on_meta.chunk(2, 2).index.device.type == "meta"  # chunk indices live on the first layer's device
