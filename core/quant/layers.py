"""One decoder layer taken apart into the stages calibration needs.

Quantizing layer by layer needs the INPUT of each linear (GPTQ's Hessian, AWQ's activation
scale) and the OUTPUT of the block it feeds (AWQ's loss), under weights that change between
stages (GPTQ quantizes q/k/v before it measures what o_proj sees). So the layer's forward is
written out here as stages over the whole calibration batch: B windows of T tokens each,
packed [B*T, h]. All windows have the same length, so attention runs as one batched causal
SDPA call instead of a loop over sequences.

Same arithmetic as layers/decoder.py's forward (the tests check the composition against it).
"""

import torch
import torch.nn.functional as F

from ...kernels import apply_rotary_signed, rms_norm, signed_sin, silu_and_mul
from ..models.causal_lm import CausalLM
from ..models.layers.decoder import DecoderLayer

# The linears of a decoder layer in the order data reaches them, grouped by shared input.
QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
O_PROJ = ("self_attn.o_proj",)
GATE_UP = ("mlp.gate_proj", "mlp.up_proj")
DOWN = ("mlp.down_proj",)
GROUPS = (QKV, O_PROJ, GATE_UP, DOWN)


def linear(layer: DecoderLayer, name: str) -> torch.nn.Linear:
    return layer.get_submodule(name)


class Batch:
    """The calibration windows' shared per-model inputs: shape, rotary angles."""

    def __init__(self, model: CausalLM, num_windows: int, seq_len: int, dtype: torch.dtype):
        self.num_windows, self.seq_len = num_windows, seq_len
        positions = torch.arange(seq_len).repeat(num_windows)  # [B*T]
        cos, sin = model.rotary.lookup(positions, dtype)
        self.cos, self.sin = cos, signed_sin(sin)
        self.scale = model.spec.head_dim**-0.5
        self.window = model.spec.sliding_window

    def subset(self, num_windows: int) -> "Batch":
        """The first num_windows windows (AWQ searches on a sample)."""
        out = object.__new__(Batch)
        out.__dict__.update(self.__dict__)
        n = num_windows * self.seq_len
        out.num_windows, out.cos, out.sin = num_windows, self.cos[:n], self.sin[:n]
        return out


def attn_input(layer: DecoderLayer, x: torch.Tensor) -> torch.Tensor:
    return rms_norm(x, layer.input_layernorm.weight, layer.input_layernorm.eps)


def attn_core(layer: DecoderLayer, h: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Normed input [N, h] -> attention output before o_proj [N, Hq*D]."""
    attn = layer.self_attn
    b, t = batch.num_windows, batch.seq_len
    q = attn.q_proj(h).view(b * t, attn.num_heads, attn.head_dim)
    k = attn.k_proj(h).view(b * t, attn.num_kv_heads, attn.head_dim)
    v = attn.v_proj(h).view(b * t, attn.num_kv_heads, attn.head_dim)
    q, k = apply_rotary_signed(q, batch.cos, batch.sin), apply_rotary_signed(k, batch.cos, batch.sin)

    def heads_first(x):  # [B*T, H, D] -> [B, H, T, D]
        return x.view(b, t, x.shape[1], x.shape[2]).transpose(1, 2)

    if batch.window is None or batch.window >= t:
        out = F.scaled_dot_product_attention(
            heads_first(q), heads_first(k), heads_first(v), is_causal=True, scale=batch.scale, enable_gqa=True
        )
    else:
        pos = torch.arange(t)
        mask = (pos[None, :] <= pos[:, None]) & (pos[:, None] - pos[None, :] < batch.window)
        out = F.scaled_dot_product_attention(
            heads_first(q), heads_first(k), heads_first(v), attn_mask=mask, scale=batch.scale, enable_gqa=True
        )
    return out.transpose(1, 2).reshape(b * t, attn.num_heads * attn.head_dim)


def attention(layer: DecoderLayer, h: torch.Tensor, batch: Batch) -> torch.Tensor:
    return layer.self_attn.o_proj(attn_core(layer, h, batch))


def mlp_input(layer: DecoderLayer, x: torch.Tensor) -> torch.Tensor:
    norm = layer.post_attention_layernorm
    return rms_norm(x, norm.weight, norm.eps)


def mlp_core(layer: DecoderLayer, h: torch.Tensor) -> torch.Tensor:
    """Normed input -> the down projection's input, silu(gate) * up [N, intermediate]."""
    return silu_and_mul(layer.mlp.gate_proj(h), layer.mlp.up_proj(h))


def mlp(layer: DecoderLayer, h: torch.Tensor) -> torch.Tensor:
    return layer.mlp.down_proj(mlp_core(layer, h))


def forward(layer: DecoderLayer, x: torch.Tensor, batch: Batch) -> torch.Tensor:
    x = x + attention(layer, attn_input(layer, x), batch)
    return x + mlp(layer, mlp_input(layer, x))


def embed(model: CausalLM, windows: list[list[int]], dtype: torch.dtype) -> torch.Tensor:
    ids = torch.tensor([t for w in windows for t in w], dtype=torch.long)
    return model.model.embed_tokens(ids).to(dtype)  # [B*T, h]
