"""Routed experts of the Qwen3-MoE layer (SDAR-30B-A3B): the router, and the experts in two equivalent forms.

The experts' weights are two stacked tensors, the layout of transformers 5 (`mlp.experts.gate_up_proj` [E, 2I, h]:
gate rows then up rows per expert; `mlp.experts.down_proj` [E, h, I]); loading.py maps the public checkpoints'
per-expert tensors onto them and save_pretrained writes them back per expert.

Two forms compute the same thing:
- grouped (decoding): the N*k (token, expert) pairs sorted by expert, one grouped matmul over the stacked weights for
  gate/up and one for down (`torch._grouped_mm`, `offs` = where each expert's rows end), the pairs put back in
  order and their weighted outputs summed. Every shape depends on N only and nothing is read back to the host, so a
  decode forward of an MoE model is captured in a CUDA graph like a dense one; an expert that gets no pair is an
  empty group, whose weights the kernel never reads (so a forward reads the *distinct* experts it routes to).
- looped (training, and where the grouped kernel does not run): one matmul per expert that got tokens, with the
  host reading which ones; the reference the grouped form is tested against.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def grouped_mm_available(x: torch.Tensor) -> bool:
    """Whether torch's grouped matmul runs on `x`'s device and dtype without reading its offsets on the host: the
    CPU build, and Hopper-or-newer GPUs in bfloat16 (the CUTLASS kernel; elsewhere torch falls back to a loop that
    reads them)."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.device.type == "cpu":
        return True
    return x.is_cuda and x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device) >= (9, 0)


def route(logits: torch.Tensor, top_k: int, norm_topk_prob: bool, dtype: torch.dtype):
    """Qwen3-MoE routing: softmax over the experts in float32, the top k, optionally renormalised.
    logits [N, E] -> (weights [N, k] in `dtype`, chosen expert ids [N, k])."""
    probs = logits.float().softmax(-1)
    weights, chosen = probs.topk(top_k, dim=-1)
    if norm_topk_prob:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights.to(dtype), chosen


class Experts(nn.Module):
    """E SwiGLU experts as two stacked weights: expert e is down_proj[e] @ (silu(g) * u), [g; u] = gate_up_proj[e] @ x.
    `grouped`: None uses the grouped form where it runs under no_grad (see grouped_mm_available), False never."""

    grouped: bool | None = None

    def __init__(self, num_experts: int, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.num_experts, self.intermediate = num_experts, intermediate
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * intermediate, hidden))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, intermediate))

    def forward(self, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [N, h], chosen / weights [N, k] -> sum over the k slots of weight * expert(x): [N, h]."""
        if Experts.grouped is not False and not torch.is_grad_enabled() and grouped_mm_available(x):
            return self.grouped_forward(x, chosen, weights)
        return self.looped_forward(x, chosen, weights)

    def grouped_forward(self, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        N, k = chosen.shape
        expert = chosen.flatten()  # [P], P = N * k pairs, token-major
        order = expert.argsort(stable=True)  # [P]: the pairs grouped by expert
        counts = torch.zeros(self.num_experts, dtype=torch.int64, device=x.device)
        counts.scatter_add_(0, expert, torch.ones_like(expert))  # (bincount would read its maximum on the host)
        ends = counts.cumsum(0).to(torch.int32)  # [E]: where each expert's rows end in the sorted pairs
        rows = x[order // k]  # [P, h]
        gate, up = torch._grouped_mm(rows, self.gate_up_proj.transpose(1, 2), offs=ends).chunk(2, dim=-1)
        out = torch._grouped_mm(F.silu(gate) * up, self.down_proj.transpose(1, 2), offs=ends)  # [P, h]
        out = torch.empty_like(out).index_copy_(0, order, out)  # back to token-major pairs
        return (out.view(N, k, -1) * weights[..., None]).sum(1)

    def looped_forward(self, x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for e in chosen.unique().tolist():  # only the experts that got tokens (the host reads which)
            token, slot = (chosen == e).nonzero(as_tuple=True)
            gate, up = F.linear(x[token], self.gate_up_proj[e]).chunk(2, dim=-1)
            y = F.linear(F.silu(gate) * up, self.down_proj[e])
            out.index_add_(0, token, y * weights[token, slot, None])
        return out


class SparseMoE(nn.Module):
    """Top-k routed experts (Qwen3-MoE): `gate` is the router, `experts` the stacked experts."""

    def __init__(self, num_experts: int, top_k: int, norm_topk_prob: bool, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.top_k, self.norm_topk_prob = top_k, norm_topk_prob
        self.gate = nn.Linear(hidden, num_experts, bias=False)
        self.experts = Experts(num_experts, hidden, intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, h]
        weights, chosen = route(self.gate(x), self.top_k, self.norm_topk_prob, x.dtype)  # [N, k] each
        return self.experts(x, chosen, weights).view(shape)
