"""benchmarks/prefill.py's prefills on the CPU: each fills its runner's cache as a prefill of that attention would
(ar: causal; sdar and sdar-masked: block-causal in blocks of 16, the same keys and values), the graph runners' padded
prefill (static on the CPU) as the plain one."""

from __future__ import annotations

import pytest
import torch

from benchmarks import common
from benchmarks.prefill import MODES, main, prefill_call


def test_the_three_prefills_fill_the_cache_as_their_attention_says():
    model = common.random_model(common.arch_config("tiny", 16), torch.device("cpu"), torch.float32)
    caches = {}
    with torch.no_grad():
        for mode in MODES:
            call, runner = prefill_call(model, 40, mode)
            assert runner.block_size == (1 if mode.startswith("ar") else 16)
            assert runner.mode == ("graph" if mode.endswith("graph") else "plain")
            if runner.mode == "graph":
                runner.mode = "static"  # the computation a graph replays, on the CPU
            assert runner.kernels.mask_free_prefill == (mode != "sdar-masked")
            assert runner.kernels.in_block_kernel == (mode == "sdar-kernel")
            assert call().shape[1] == 0  # logits of nothing: the cache is what a prefill leaves
            caches[mode] = runner.cache.k[-1][:, :, :40].clone()
    assert torch.equal(caches["sdar"], caches["sdar-masked"])
    assert torch.equal(caches["sdar-kernel"], caches["sdar"])  # no kernel on the CPU: the torch ops
    for mode in ("ar", "sdar"):
        torch.testing.assert_close(caches[f"{mode}-graph"], caches[mode], rtol=0, atol=1e-5)
    # the last layer's keys depend on the attention of the layers before: causal and block-causal differ
    assert (caches["ar"] - caches["sdar"]).abs().max() > 1e-3


def test_without_a_gpu_it_says_so():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(SystemExit, match="no CUDA device"):
        main(["--lengths", "8"])
