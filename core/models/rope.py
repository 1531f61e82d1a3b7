"""Rotary frequencies (incl. linear, Llama-3 and LongRoPE scaling) and a cos/sin table by position.

Formulas follow transformers' rope initialisers so logits match HF's exactly.
"""

import math

import torch

from .spec import RopeSpec


def rotary_dim(rope: RopeSpec, head_dim: int) -> int:
    """The features that rotate (all but with a partial_rotary_factor, as in Phi-4-mini)."""
    return int(head_dim * rope.partial_rotary_factor)


def inv_frequencies(rope: RopeSpec, head_dim: int, long: bool = False) -> torch.Tensor:
    """[rotary_dim // 2] fp32 inverse frequencies after any scaling; `long`: LongRoPE's
    factors for positions past original_max_position."""
    dim = rotary_dim(rope, head_dim)
    # Explicit CPU: models are built under torch.device("meta"), which would capture these.
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    inv_freq = 1.0 / (rope.theta**exponents)
    if rope.kind == "longrope":
        factors = rope.long_factor if long else rope.short_factor
        return 1.0 / (torch.tensor(factors, dtype=torch.float32, device="cpu") * rope.theta**exponents)
    if rope.freq_factors is not None:
        return inv_freq / torch.tensor(rope.freq_factors, dtype=torch.float32, device="cpu")
    if rope.kind == "linear":
        return inv_freq / rope.factor
    if rope.kind == "llama3":
        return _llama3(inv_freq, rope)
    return inv_freq


def _llama3(inv_freq: torch.Tensor, rope: RopeSpec) -> torch.Tensor:
    # Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
    low_wavelen = rope.original_max_position / rope.low_freq_factor
    high_wavelen = rope.original_max_position / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (rope.original_max_position / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    blended = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(is_medium, blended, scaled)


class RotaryTable:
    """cos/sin rows by position, grown on demand so long contexts cost nothing up front.

    LongRoPE (Phi-3): rows below original_max_position use the short factors, rows from it on
    the long ones, all times attention_factor. transformers switches a whole sequence to the
    long factors once it grows past that length (and keeps the keys it cached before); a row
    per position is what a paged cache can hold, and agrees wherever sequences stay short."""

    def __init__(self, rope: RopeSpec, head_dim: int):
        self.rope = rope
        self.inv_freq = inv_frequencies(rope, head_dim)  # [D'/2] fp32
        self.long_inv_freq = inv_frequencies(rope, head_dim, long=True) if rope.kind == "longrope" else None
        dim = rotary_dim(rope, head_dim)
        self.cos = torch.empty(0, dim, device="cpu")
        self.sin = torch.empty(0, dim, device="cpu")

    def lookup(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [N] -> (cos, sin) each [N, D] in `dtype`."""
        needed = int(positions.max()) + 1 if positions.numel() else 0
        if needed > self.cos.shape[0] or self.cos.device != positions.device or self.cos.dtype != dtype:
            self._build(max(needed, 2 * self.cos.shape[0], 256), positions.device, dtype)
        return self.cos[positions], self.sin[positions]

    def _build(self, length: int, device, dtype) -> None:
        pos = torch.arange(length, device=device, dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq.to(device)[None, :]  # [L, D/2]
        if self.long_inv_freq is not None:
            long = pos[:, None] * self.long_inv_freq.to(device)[None, :]
            freqs = torch.where(pos[:, None] >= self.rope.original_max_position, long, freqs)
        emb = torch.cat((freqs, freqs), dim=-1)  # [L, D]
        cos, sin = emb.cos(), emb.sin()
        if self.rope.attention_factor != 1.0:
            cos, sin = cos * self.rope.attention_factor, sin * self.rope.attention_factor
        self.cos, self.sin = cos.to(dtype), sin.to(dtype)
