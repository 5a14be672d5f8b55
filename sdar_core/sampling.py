"""From logits to a candidate token and its confidence at every position of the block in flight.

Temperature 0 is greedy (argmax). Otherwise the logits are divided by the temperature, filtered by top-k
and top-p, and a token is drawn with a seeded generator. The confidence of a position is the probability
of its chosen token under the (filtered) distribution; its entropy is taken over the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class SamplingError(ValueError):
    """Sampling parameters out of range."""


@dataclass
class SamplingParams:
    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter

    def validate(self) -> None:
        if not self.temperature >= 0:
            raise SamplingError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise SamplingError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set to -inf the logits outside the top-k and outside the smallest set with mass >= top_p."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p  # keep the token that crosses top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(
    logits: torch.Tensor,  # [B, L, V]
    params: SamplingParams,
    *,
    forbid_token: int | None,
    generator: torch.Generator | None,
    want_entropy: bool = False,
):
    """Candidates x0 [B, L], their confidences [B, L] and (if asked) entropies [B, L] in nats.

    `forbid_token` (the mask token) gets probability zero, so it is never proposed.
    """
    if params.temperature == 0 and not want_entropy:
        # Greedy: argmax and p(argmax) = exp(max - logsumexp) in two passes over the logits, without
        # materialising the softmax (at batch 64 x block 64 the logits of one step are GBs).
        if forbid_token is not None:
            logits[..., forbid_token] = float("-inf")
        best, x0 = logits.max(-1)
        confidence = (best.float() - torch.logsumexp(logits.float(), -1)).exp()
        return x0, confidence, None
    logits = logits.float()
    if forbid_token is not None:
        logits[..., forbid_token] = float("-inf")
    if params.temperature > 0:
        logits = filter_logits(logits / params.temperature, params.top_k, params.top_p)
    probs = logits.softmax(-1)  # [B, L, V]
    if params.temperature > 0:
        flat = probs.reshape(-1, probs.shape[-1])
        x0 = torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])
    else:
        x0 = probs.argmax(-1)
    confidence = probs.gather(-1, x0[..., None]).squeeze(-1)
    entropy = None
    if want_entropy:
        entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
    return x0, confidence, entropy
