"""Self-attention: projections, optional q/k norms, rotary, the context's attention, output.

What varies by family comes from the spec: biases, q/k RMSNorm per head (Qwen3, Gemma 3) or
over the full width (OLMo 2), and the layer's LayerAttention (window, scale, soft-cap, rope),
which the AttentionContext reads by layer index. Phi-3 checkpoints store q/k/v as one
qkv_proj: then the module is built fused from the start.
"""

import torch
from torch import nn

from ....kernels import apply_rotary_signed
from ..spec import ModelSpec
from .linear import fuse_linears
from .norm import RMSNorm


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, layer_idx: int, fused_qkv: bool = False):
        super().__init__()
        h = spec.hidden_size
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.sizes = (spec.q_size, spec.kv_size, spec.kv_size)
        if fused_qkv:
            self.qkv_proj = nn.Linear(h, sum(self.sizes), bias=spec.qkv_bias)
        else:
            self.q_proj = nn.Linear(h, spec.q_size, bias=spec.qkv_bias)
            self.k_proj = nn.Linear(h, spec.kv_size, bias=spec.qkv_bias)
            self.v_proj = nn.Linear(h, spec.kv_size, bias=spec.qkv_bias)
            self.qkv_proj: nn.Module | None = None  # set by fuse()
        self.o_proj = nn.Linear(spec.q_size, h, bias=spec.o_bias)
        self.qk_norm = spec.qk_norm
        if spec.qk_norm is not None:
            q_width, k_width = (spec.head_dim, spec.head_dim) if spec.qk_norm == "head" else (spec.q_size, spec.kv_size)
            self.q_norm = RMSNorm(q_width, spec.rms_norm_eps, spec.norm_offset)
            self.k_norm = RMSNorm(k_width, spec.rms_norm_eps, spec.norm_offset)
        self.rotary_dim = int(spec.head_dim * spec.layer_attention(layer_idx).rope.partial_rotary_factor)

    def fuse(self) -> None:
        """q, k and v as one product (one call, one packed weight); drops the originals."""
        parts = (self.qkv_proj,) if self.qkv_proj is not None else (self.q_proj, self.k_proj, self.v_proj)
        self.qkv_proj = fuse_linears(parts)
        self.o_proj = fuse_linears((self.o_proj,))
        if hasattr(self, "q_proj"):
            del self.q_proj, self.k_proj, self.v_proj
        if self.qk_norm is not None:
            self.q_norm.fold()
            self.k_norm.fold()

    def forward(self, x, cos, sin, ctx):
        n = x.shape[0]
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split(self.sizes, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.qk_norm == "full":
            q, k = self.q_norm(q.contiguous()), self.k_norm(k.contiguous())
        q = q.view(n, self.num_heads, self.head_dim)  # [N, Hq, D]
        k = k.view(n, self.num_kv_heads, self.head_dim)  # [N, Hk, D]
        v = v.view(n, self.num_kv_heads, self.head_dim)  # [N, Hk, D]
        if self.qk_norm == "head":
            q = self.q_norm(q.reshape(-1, self.head_dim)).view(n, self.num_heads, self.head_dim)
            k = self.k_norm(k.reshape(-1, self.head_dim)).view(n, self.num_kv_heads, self.head_dim)
        q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        out = ctx.attend(self.layer_idx, q, k, v)  # [N, Hq, D]
        return self.o_proj(out.reshape(n, self.num_heads * self.head_dim))

    def _rotate(self, x, cos, sin):
        if self.rotary_dim == self.head_dim:
            return apply_rotary_signed(x, cos, sin)  # sin is pre-signed
        # Partial rotary (Phi-4-mini): the first rotary_dim features rotate, the rest pass.
        d = self.rotary_dim
        return torch.cat((apply_rotary_signed(x[..., :d].contiguous(), cos, sin), x[..., d:]), dim=-1)

