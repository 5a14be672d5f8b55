"""The Qwen3 transformer (dense and MoE) with block-causal attention: SDAR's network.

The parameter names are those of the public SDAR / Qwen3 checkpoints (`model.layers.N.self_attn.q_proj`,
`model.norm`, `lm_head`, ...); `loading.py` maps files onto them one to one. The numerics follow
transformers' Qwen3 (RMSNorm in float32, RoPE with rotate-half, per-head q/k RMSNorm before RoPE).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import AttentionInputs, attend
from .config import ModelConfig
from .decode_attention import Rope, rope_runs, split_k_rope_attention
from .fused import add_rms_norm, silu_mul
from .gemm import (
    Fp8Linear,
    Fp8Weight,
    Normed,
    add_linear,
    add_runs,
    linear,
    module_weight,
    project,
    quantize_fp8,
    swiglu_linear,
    swiglu_runs,
)
from .kernels import DEFAULT_KERNELS, Kernels
from .kv_cache import CacheSlot
from .moe import SparseMoE
from .norm_rope import (
    norm_rope,
    norm_rope_available,
    norm_rope_qk_to_cache,
    norm_rope_to_cache,
    to_cache_available,
)
from .persistent import mlp as persistent_mlp
from .persistent import mlp_runs


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and x.dtype != torch.float32:
            # One fused kernel (float32 inside, one rounding at the end) instead of eight; transformers
            # rounds once more, before the weight: the two differ by at most one bf16 ulp.
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype):
    """cos, sin: [B, 1, Q, D] for RoPE at integer `positions` [B, Q] (computed in float32)."""
    freqs = positions[..., None].float() * inv_freq.float()  # [B, Q, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Residual(NamedTuple):
    """The residual stream between sublayers: x + delta, the add not made yet where delta is given (it is made where
    the sum is normalised: fused.add_rms_norm). With `squares`, delta is None and x was formed by the GEMM that added
    the sublayer's output (gemm.add_linear, kernels.Kernels' norm_fold), which wrote x's sums of squares beside it."""

    x: torch.Tensor
    delta: torch.Tensor | None = None
    squares: torch.Tensor | None = None

    def rows(self, start: int, stop: int | None) -> Residual:
        """Positions [start, stop) of the chunk ([B, Q, ...] each)."""
        return Residual(*(t[:, start:stop] if t is not None else None for t in self))


def normalize(res: Residual, norm: RMSNorm, kernels: Kernels) -> tuple[torch.Tensor, torch.Tensor | Normed]:
    """(the residual stream, its normalised form): a Normed for the next GEMM to form as it loads it where the
    stream came with its squares, else add + norm (one kernel on the GPU)."""
    if res.squares is not None:
        return res.x, Normed(res.x, res.squares, norm)
    return add_rms_norm(res.x, res.delta, norm, kernels.add_norm)


def add_project(
    module: nn.Module, inp: torch.Tensor, residual: torch.Tensor, kernels: Kernels, swiglu: bool = False
) -> Residual:
    """residual + module(inp) (with `swiglu`, inp is [gate; up] and module the down projection): added by the GEMM
    as it stores the product where norm_fold is on and the kernel runs (gemm.add_runs), else left to the next norm."""
    if kernels.norm_fold and kernels.skinny_gemm and getattr(module, "bias", None) is None:
        weight = module_weight(module)
        if add_runs(inp, weight, residual, swiglu):
            total, squares = add_linear(inp, weight, residual, swiglu)
            return Residual(total, squares=squares)
    if swiglu:
        return Residual(residual, swiglu_linear(inp, module_weight(module)))
    return Residual(residual, project(module, inp, kernels.skinny_gemm))


def dense(x: torch.Tensor | Normed) -> torch.Tensor:
    """x as a tensor (a Normed formed now), for a reader other than a projection."""
    return x.tensor() if isinstance(x, Normed) else x


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        h, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=bias)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.qkv_weight: torch.Tensor | Fp8Weight | None = None  # set by fuse_projections(), quantize_fp8()

    def fuse_projections(self) -> None:
        """One [q; k; v] weight and q/k/v_proj.weight as views into it: one matmul instead of three, no
        extra memory, the same parameter names."""
        if self.q_proj.bias is not None or self.qkv_weight is not None:
            return
        fused = torch.cat([self.q_proj.weight.data, self.k_proj.weight.data, self.v_proj.weight.data])
        nq, nk = self.q_proj.weight.shape[0], self.k_proj.weight.shape[0]
        self.q_proj.weight = nn.Parameter(fused[:nq], requires_grad=False)
        self.k_proj.weight = nn.Parameter(fused[nq : nq + nk], requires_grad=False)
        self.v_proj.weight = nn.Parameter(fused[nq + nk :], requires_grad=False)
        self.qkv_weight = fused

    def quantize_fp8(self) -> None:
        """Inference only: q/k/v and o as float8 weights with a scale per output row (gemm.quantize_fp8); the
        fused [q; k; v] quantized once, q/k/v_proj Fp8Linear views into it. With biases, each on its own."""
        if isinstance(self.o_proj, Fp8Linear):
            return
        self.fuse_projections()
        if self.qkv_weight is not None:
            packed = quantize_fp8(self.qkv_weight)
            nq, nk = self.q_proj.weight.shape[0], self.k_proj.weight.shape[0]
            self.qkv_weight = packed
            self.q_proj = Fp8Linear(packed.rows(0, nq))
            self.k_proj = Fp8Linear(packed.rows(nq, nq + nk))
            self.v_proj = Fp8Linear(packed.rows(nq + nk, packed.shape[0]))
        else:
            self.q_proj, self.k_proj, self.v_proj = (
                Fp8Linear(quantize_fp8(m.weight), m.bias) for m in (self.q_proj, self.k_proj, self.v_proj)
            )
        self.o_proj = Fp8Linear(quantize_fp8(self.o_proj.weight), self.o_proj.bias)

    @staticmethod
    def norm_rope(
        x: torch.Tensor, norm: RMSNorm, cos: torch.Tensor, sin: torch.Tensor, fuse: bool = True
    ) -> torch.Tensor:
        """RoPE(RMSNorm(x)): x [B, Q, H, D] -> [B, H, Q, D]; one kernel on CUDA (norm_rope.py), eager elsewhere."""
        if fuse and norm_rope_available(x, norm.weight):
            return norm_rope(x, norm.weight, norm.eps, cos, sin)
        return apply_rope(norm(x).transpose(1, 2), cos, sin)

    def rope_to_cache(
        self, q, k, v, cos, sin, cache: CacheSlot, kernels: Kernels
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RoPE(RMSNorm(q)) [B, H, Q, D], and the chunk's RoPE(RMSNorm(k)) and v (q, k, v [B, Q, heads, D]) stored
        in the cache; returns q and the keys and values attention reads. On CUDA one kernel normalises, rotates and
        writes the keys and values (norm_rope_to_cache), and with `qk_rope` the queries in the same launch
        (norm_rope_qk_to_cache)."""
        if kernels.norm_rope and kernels.cache_write and norm_rope_available(k, self.k_norm.weight):
            k_buf, v_buf, index = cache.buffers(self.layer)
            if to_cache_available(k, v, k_buf, v_buf):
                qn, kn = self.q_norm, self.k_norm
                if kernels.qk_rope and norm_rope_available(q, qn.weight):
                    q = norm_rope_qk_to_cache(
                        q, k, v, qn.weight, kn.weight, qn.eps, kn.eps, cos, sin, k_buf, v_buf, index
                    )
                else:
                    q = self.norm_rope(q, qn, cos, sin, kernels.norm_rope)
                    norm_rope_to_cache(k, v, kn.weight, kn.eps, cos, sin, k_buf, v_buf, index)
                return (q, *cache.visible(self.layer))
        q = self.norm_rope(q, self.q_norm, cos, sin, kernels.norm_rope)
        k = self.norm_rope(k, self.k_norm, cos, sin, kernels.norm_rope)  # [B, H_kv, Q, D]
        return (q, *cache.write(self.layer, k, v.transpose(1, 2)))

    def rope_in_attention(
        self, q, k, v, cos, sin, attn: AttentionInputs, cache: CacheSlot, kernels: Kernels
    ) -> torch.Tensor | None:
        """The split-K attention [B, H, Q, D] of the raw q, k, v [B, Q, heads, D], the kernel forming q and the
        chunk's keys (RMSNorm, RoPE) and writing them and the values into the cache itself, where Kernels'
        rope_in_attention asks for it and the kernel takes them (decode_attention.rope_runs); else None."""
        if not (kernels.rope_in_attention and attn.cache_queries is not None):
            return None
        k_buf, v_buf, _ = cache.buffers(self.layer)
        k_buf, v_buf = k_buf[:, :, : cache.keys], v_buf[:, :, : cache.keys]
        rope = Rope(k, v, self.q_norm.weight, self.k_norm.weight, self.q_norm.eps, self.k_norm.eps, cos, sin)
        if not rope_runs(q, rope, k_buf, v_buf):
            return None
        return split_k_rope_attention(q, rope, k_buf, v_buf, attn.cache_queries, kernels.merge_fold)

    def forward(
        self, x, residual, cos, sin, attn: AttentionInputs, cache: CacheSlot | None, kernels: Kernels
    ) -> Residual:
        """x: the normalised stream (a Normed that the q/k/v GEMM normalises as it loads it) -> the stream
        `residual` plus the attention's output."""
        B, Q, _ = x.shape
        if self.qkv_weight is not None:
            q, k, v = linear(x, self.qkv_weight, fuse=kernels.skinny_gemm).split(
                [self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim], dim=-1
            )
        else:
            q, k, v = (project(m, x, kernels.skinny_gemm) for m in (self.q_proj, self.k_proj, self.v_proj))
        q = q.view(B, Q, self.n_heads, self.head_dim)
        k, v = (
            k.view(B, Q, self.n_kv, self.head_dim),
            v.view(B, Q, self.n_kv, self.head_dim),
        )  # [B, Q, H_kv, D]
        if cache is not None:
            out = self.rope_in_attention(q, k, v, cos, sin, attn, cache, kernels)
            if out is not None:
                return add_project(self.o_proj, out.transpose(1, 2).reshape(B, Q, -1), residual, kernels)
            q, k, v = self.rope_to_cache(q, k, v, cos, sin, cache, kernels)  # k, v: [B, H_kv, cache.keys, D]
        else:
            q = self.norm_rope(q, self.q_norm, cos, sin, kernels.norm_rope)
            k, v = (
                self.norm_rope(k, self.k_norm, cos, sin, kernels.norm_rope),
                v.transpose(1, 2),
            )  # [B, H_kv, Q, D]
        out = attend(q, k, v, attn, kernels)  # [B, H, Q, D]
        return add_project(self.o_proj, out.transpose(1, 2).reshape(B, Q, -1), residual, kernels)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.gate_up_weight: torch.Tensor | Fp8Weight | None = (
            None  # set by fuse_projections(), quantize_fp8()
        )

    def fuse_projections(self) -> None:
        """One [gate; up] weight, gate/up_proj.weight as views into it (see Attention.fuse_projections)."""
        if self.gate_up_weight is not None:
            return
        fused = torch.cat([self.gate_proj.weight.data, self.up_proj.weight.data])
        n = self.gate_proj.weight.shape[0]
        self.gate_proj.weight = nn.Parameter(fused[:n], requires_grad=False)
        self.up_proj.weight = nn.Parameter(fused[n:], requires_grad=False)
        self.gate_up_weight = fused

    def quantize_fp8(self) -> None:
        """Inference only: [gate; up] and down as float8 weights (see Attention.quantize_fp8)."""
        if isinstance(self.down_proj, Fp8Linear):
            return
        self.fuse_projections()
        packed = quantize_fp8(self.gate_up_weight)
        n = self.gate_proj.weight.shape[0]
        self.gate_up_weight = packed
        self.gate_proj = Fp8Linear(packed.rows(0, n))
        self.up_proj = Fp8Linear(packed.rows(n, packed.shape[0]))
        self.down_proj = Fp8Linear(quantize_fp8(self.down_proj.weight))

    def forward(self, x, residual: torch.Tensor, kernels: Kernels = DEFAULT_KERNELS) -> Residual:
        """x: the normalised stream (tensor or Normed) -> the stream `residual` plus the MLP's output."""
        if self.gate_up_weight is not None:
            down = module_weight(self.down_proj)
            if (
                kernels.persistent_mlp
                and kernels.norm_fold
                and kernels.silu_down
                and kernels.skinny_gemm
                and isinstance(x, Normed)
                and mlp_runs(x, self.gate_up_weight, down, residual)
            ):
                total, squares = persistent_mlp(x, self.gate_up_weight, down, residual)
                return Residual(total, squares=squares)
            gate_up = linear(x, self.gate_up_weight, fuse=kernels.skinny_gemm)
            if kernels.silu_down and kernels.skinny_gemm and swiglu_runs(gate_up, down):
                return add_project(self.down_proj, gate_up, residual, kernels, swiglu=True)
            act = silu_mul(gate_up, kernels.silu_mul)
        else:
            fuse = kernels.skinny_gemm
            act = F.silu(project(self.gate_proj, x, fuse)) * project(self.up_proj, x, fuse)
        return add_project(self.down_proj, act, residual, kernels)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer)
        if config.layer_is_sparse(layer):
            self.mlp = SparseMoE(
                config.num_experts,
                config.num_experts_per_tok,
                config.norm_topk_prob,
                config.hidden_size,
                config.moe_intermediate_size,
            )
        else:
            self.mlp = MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self, res: Residual, cos, sin, attn: AttentionInputs, cache: CacheSlot | None, kernels: Kernels
    ):
        """The residual stream before this layer -> after it (Residual: each add is made where its sum is
        normalised, fused.add_rms_norm, or by the GEMM that ends the sublayer, gemm.add_linear)."""
        x, h = normalize(res, self.input_layernorm, kernels)
        res = self.self_attn(h, x, cos, sin, attn, cache, kernels)
        x, h = normalize(res, self.post_attention_layernorm, kernels)
        if isinstance(self.mlp, SparseMoE):
            if isinstance(h, Normed) and self.mlp.fold_runs(h, x, kernels):  # Kernels.expert_fold
                total, squares = self.mlp.folded(h, x, kernels)
                return Residual(total, squares=squares)
            return Residual(x, self.mlp(dense(h), kernels))
        return self.mlp(h, x, kernels)


class Backbone(nn.Module):
    """`model.*` in the checkpoints: embeddings, layers, final norm."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class SDARForCausalLM(nn.Module):
    """Qwen3 / SDAR language model. `model(input_ids)` -> logits [B, T, V] under block-causal attention."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self, device=None) -> torch.Tensor:
        """RoPE's inverse frequencies, computed on `device`; None: on the CPU (as transformers does), then moved to
        the default device (a meta one while `loading.empty_model` builds: meta arithmetic runs through torch._refs,
        whose first call imports torch._dynamo)."""
        d = self.config.head_dim
        exponent = torch.arange(0, d, 2, dtype=torch.int64, device=device or "cpu").float() / d
        inv_freq = 1.0 / (self.config.rope_theta**exponent)
        return inv_freq if device is not None else inv_freq.to(torch.get_default_device())

    def fuse_projections(self) -> SDARForCausalLM:
        """Inference only: fuse q/k/v and gate/up matmuls (fewer, larger kernels; same numbers up to
        matmul rounding, same parameter names). Training keeps the separate weights."""
        for module in self.modules():
            if isinstance(module, (Attention, MLP)):
                module.fuse_projections()
        return self

    def quantize_fp8(self) -> SDARForCausalLM:
        """Inference only, in place: every dense projection and the lm_head as float8 e4m3 weights with a float32
        scale per output row (gemm.quantize_fp8), read by the skinny kernel on CUDA: half the bytes of bf16 per
        decode step. Activations, norms, the embedding (a tied one too: the lm_head gets a float8 copy) and an MoE's
        routed experts keep the model's dtype. Each module fuses its projections first; the bf16 weights are freed."""
        for module in list(self.modules()):
            if isinstance(module, (Attention, MLP)):
                module.quantize_fp8()
        if not isinstance(self.lm_head, Fp8Linear):
            self.lm_head = Fp8Linear(quantize_fp8(self.lm_head.weight))
        return self

    @property
    def weights(self) -> str:
        """ "fp8" after quantize_fp8, else the dtype's name ("bfloat16", "float32", ...)."""
        return "fp8" if isinstance(self.lm_head, Fp8Linear) else str(self.dtype).removeprefix("torch.")

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The embeddings of input_ids [B, Q] -> [B, Q, h]. At inference on CUDA with the table on the ids' device
        and more than one id, an indexing read (torch's gather kernel: 2.1 us for a 16-token block on an H100, where
        the module's index_select took 13.3 us; for one id index_select's 2.5 us beat indexing's 5.5, so one id keeps
        the module: benchmarks/NOTES.md); else the module call (training; big-model dispatch, whose hooks bring the
        table)."""
        table = self.model.embed_tokens.weight
        if (
            torch.is_grad_enabled()
            or not input_ids.is_cuda
            or table.device != input_ids.device
            or input_ids.numel() == 1
        ):
            return self.model.embed_tokens(input_ids)
        return table[input_ids]

    def reset_rope(self, device) -> None:
        """Recompute the RoPE buffer (after meta-device initialisation)."""
        self.inv_freq = self._inv_freq(device)

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, Q]
        positions: torch.Tensor | None = None,  # [B, Q] RoPE positions; default cache.start + arange(Q)
        *,
        attn: AttentionInputs | None = None,
        cache: CacheSlot | None = None,
        logits_from: int = 0,
        logits_to: int | None = None,
        block_size: int | None = None,
        kernels: Kernels = DEFAULT_KERNELS,
    ) -> torch.Tensor:
        """Logits [B, logits_from:logits_to, V] for the chunk `input_ids` (default: every position).

        Without a cache the chunk is the whole sequence. With one (`kv_cache.chunk(start, Q)`, or `chunk_at(index)`
        for static shapes) the chunk's keys and values are written at the slot's positions and attention reads
        the cache positions [0, cache.keys). `attn` says which keys each query sees (attention.AttentionInputs: a
        dense mask, a flex BlockMask, or the chunk's cache indices for the split-K kernel); None means
        block-causal over key indices with `block_size` (default: the config's), for a chunk that ends the keys it
        reads (see attention.chunk_mask). `logits_from` / `logits_to` run the lm_head on a slice of the chunk only
        (the decoder reads the block in flight; training the noisy half). `kernels` picks the kernels (kernels.py).
        """
        B, Q = input_ids.shape
        start = cache.start if cache is not None else 0
        if positions is None:
            positions = torch.arange(start, start + Q, device=input_ids.device).expand(B, Q)
        if attn is None:
            block = block_size or self.config.block_size
            attn = AttentionInputs.chunk(start, Q, start + Q, block, device=input_ids.device)
        x = self.embed(input_ids)
        cos, sin = rope_cos_sin(positions, self.inv_freq, x.dtype)
        res = Residual(x)
        for layer in self.model.layers:
            res = layer(res, cos, sin, attn, cache, kernels)
        _, x = normalize(res.rows(logits_from, logits_to), self.model.norm, kernels)
        return project(self.lm_head, x, kernels.skinny_gemm)
