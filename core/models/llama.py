"""The Llama-family forward pass (Llama 2/3, SmolLM2, Mistral, Qwen2), our own.

Tokens of all sequences are packed into one dimension [N] (varlen, no padding), which is
what the engine schedules; attention goes through an AttentionContext (see context.py).
Parameter names match transformers' so HF checkpoints load and export without renaming.
"""

import torch
from torch import nn

from ...kernels import add_rms_norm, apply_rotary_signed, rms_norm, signed_sin, silu_and_mul
from ...kernels.linear import PackedLinear
from ...kernels.quant_linear import QuantLinear
from .context import AttentionContext
from .rope import RotaryTable
from .spec import ModelSpec


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)

    def add_forward(self, x, residual):
        """(norm(x + residual), x + residual) in one pass: the residual add fused in."""
        return add_rms_norm(x, residual, self.weight, self.eps)


def fuse_linears(parts) -> nn.Module:
    """Linears sharing an input as one (row-stacked) product: packed for oneDNN when they are
    plain, one QuantLinear when all are quantized alike; a mix stays separate products."""
    if all(isinstance(p, QuantLinear) for p in parts):
        if len(parts) == 1:
            return parts[0]
        try:
            return QuantLinear.concat(list(parts))
        except ValueError:  # e.g. act-order parts with different g_idx: one product each
            return _Stacked(parts)
    if any(isinstance(p, QuantLinear) for p in parts):
        return _Stacked(parts)
    bias = torch.cat([p.bias for p in parts]) if parts[0].bias is not None else None
    return PackedLinear(torch.cat([p.weight for p in parts]), bias)


class _Stacked(nn.Module):
    """Separate products concatenated (some parts quantized, some kept in full precision)."""

    def __init__(self, parts):
        super().__init__()
        self.parts = nn.ModuleList(p if isinstance(p, QuantLinear) else PackedLinear(p.weight, p.bias) for p in parts)

    def forward(self, x):
        return torch.cat([p(x) for p in self.parts], dim=-1)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, layer_idx: int):
        super().__init__()
        h = spec.hidden_size
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.q_proj = nn.Linear(h, spec.q_size, bias=spec.qkv_bias)
        self.k_proj = nn.Linear(h, spec.kv_size, bias=spec.qkv_bias)
        self.v_proj = nn.Linear(h, spec.kv_size, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(spec.q_size, h, bias=spec.o_bias)
        self.qkv_proj: nn.Module | None = None  # set by prepare_for_inference
        self.sizes = (spec.q_size, spec.kv_size, spec.kv_size)

    def fuse(self) -> None:
        """q, k and v as one product (one call, one packed weight); drops the three originals."""
        self.qkv_proj = fuse_linears((self.q_proj, self.k_proj, self.v_proj))
        self.o_proj = fuse_linears((self.o_proj,))
        del self.q_proj, self.k_proj, self.v_proj

    def forward(self, x, cos, sin, ctx: AttentionContext):
        n = x.shape[0]
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split(self.sizes, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q = q.view(n, self.num_heads, self.head_dim)  # [N, Hq, D]
        k = k.view(n, self.num_kv_heads, self.head_dim)  # [N, Hk, D]
        v = v.view(n, self.num_kv_heads, self.head_dim)  # [N, Hk, D]
        q, k = apply_rotary_signed(q, cos, sin), apply_rotary_signed(k, cos, sin)  # sin is pre-signed
        out = ctx.attend(self.layer_idx, q, k, v)  # [N, Hq, D]
        return self.o_proj(out.reshape(n, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        h, i = spec.hidden_size, spec.intermediate_size
        self.gate_proj = nn.Linear(h, i, bias=spec.mlp_bias)
        self.up_proj = nn.Linear(h, i, bias=spec.mlp_bias)
        self.down_proj = nn.Linear(i, h, bias=spec.mlp_bias)
        self.gate_up_proj: nn.Module | None = None  # set by prepare_for_inference
        self.intermediate_size = i

    def fuse(self) -> None:
        """gate and up as one product; drops the two originals."""
        self.gate_up_proj = fuse_linears((self.gate_proj, self.up_proj))
        self.down_proj = fuse_linears((self.down_proj,))
        del self.gate_proj, self.up_proj

    def forward(self, x):
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
            return self.down_proj(silu_and_mul(gate, up))
        return self.down_proj(silu_and_mul(self.gate_proj(x), self.up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.self_attn = Attention(spec, layer_idx)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)
        self.mlp = MLP(spec)

    def forward(self, x, residual, cos, sin, ctx):
        """x: the previous layer's output (not yet added), residual: the stream before it (None
        at the first layer). Returns the same pair; each add is fused into the next norm."""
        if residual is None:
            h, residual = self.input_layernorm(x), x
        else:
            h, residual = self.input_layernorm.add_forward(x, residual)
        h = self.self_attn(h, cos, sin, ctx)
        h, residual = self.post_attention_layernorm.add_forward(h, residual)
        return self.mlp(h), residual


class Backbone(nn.Module):
    """HF's `model.*` submodule: embeddings, decoder layers, final norm."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        # _weight skips nn.Embedding's random init: the loader fills every weight, and on the meta
        # device normal_() imports torch._dynamo, 1.4 s of a server's cold start.
        self.embed_tokens = nn.Embedding(
            spec.vocab_size, spec.hidden_size, _weight=torch.empty(spec.vocab_size, spec.hidden_size)
        )
        self.layers = nn.ModuleList(DecoderLayer(spec, i) for i in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.model = Backbone(spec)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        self.rotary = RotaryTable(spec.rope, spec.head_dim)
        self.inference_ready = False

    def prepare_for_inference(self) -> "LlamaForCausalLM":
        """Fuse q/k/v and gate/up and pack every projection for the hardware (kernels.linear):
        fewer, faster products. The model is inference-only afterwards (its state_dict no
        longer has HF's names); serving calls this, loading and exporting do not. Idempotent."""
        if self.inference_ready:
            return self
        with torch.no_grad():
            for layer in self.model.layers:
                layer.self_attn.fuse()
                layer.mlp.fuse()
            self.lm_head = PackedLinear(self.lm_head.weight)
        self.inference_ready = True
        return self

    def tie_weights(self) -> None:
        if self.spec.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: AttentionContext
    ) -> torch.Tensor:
        """input_ids, positions [N] (all sequences packed) -> final hidden states [N, hidden]."""
        x = self.model.embed_tokens(input_ids)  # [N, h]
        cos, sin = self.rotary.lookup(positions, x.dtype)  # [N, D] each
        sin = signed_sin(sin)  # once per forward, not per layer
        residual = None
        for layer in self.model.layers:
            x, residual = layer(x, residual, cos, sin, ctx)
        if residual is None:
            return self.model.norm(x)
        return self.model.norm.add_forward(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, h] -> fp32 logits [N, vocab]; callers pass only the rows they sample."""
        return self.lm_head(hidden).float()
