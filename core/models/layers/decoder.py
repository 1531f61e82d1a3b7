"""The decoder layer: one block recipe, three norm placements (spec.block).

- "pre" (Llama, Qwen, Mistral, Phi-3, Granite): norm -> attn -> add; norm -> mlp -> add.
- "sandwich" (Gemma 2/3): norm -> attn -> norm -> add; norm -> mlp -> norm -> add.
- "post" (OLMo 2): attn -> norm -> add; mlp -> norm -> add (no norm before a block).

Layers pass (x, residual): the last block's output not yet added, and the stream before it,
so each add fuses into the next norm where the recipe puts a norm there. Module names are
the checkpoints'; note that post_attention_layernorm is the pre-MLP norm in "pre" but the
attention output's norm in "sandwich" and "post".
"""

from torch import nn

from ..spec import ModelSpec
from .attention import Attention
from .mlp import MLP
from .moe import SparseMoE
from .norm import RMSNorm


class DecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec, layer_idx: int, names):
        """names: the family (its fused_qkv, fused_gate_up, moe_block, expert_names)."""
        super().__init__()
        h, eps, off = spec.hidden_size, spec.rms_norm_eps, spec.norm_offset
        self.block = spec.block
        self.residual_scale = spec.residual_scale
        if spec.block != "post":
            self.input_layernorm = RMSNorm(h, eps, off)
        self.self_attn = Attention(spec, layer_idx, names.fused_qkv)
        self.post_attention_layernorm = RMSNorm(h, eps, off)
        if spec.block == "sandwich":
            self.pre_feedforward_layernorm = RMSNorm(h, eps, off)
        if spec.block != "pre":
            self.post_feedforward_layernorm = RMSNorm(h, eps, off)
        self.mlp_name = names.moe_block if spec.moe is not None else "mlp"
        if spec.moe is not None:
            setattr(self, self.mlp_name, SparseMoE(spec, names.expert_names))
        else:
            self.mlp = MLP(spec, names.fused_gate_up)

    @property
    def ffn(self) -> nn.Module:
        return getattr(self, self.mlp_name)

    def norms(self) -> list[RMSNorm]:
        return [m for m in self.children() if isinstance(m, RMSNorm)]

    def fuse(self) -> None:
        self.self_attn.fuse()
        self.ffn.fuse()
        for norm in self.norms():
            norm.fold()

    def forward(self, x, residual, cos, sin, ctx):
        """x: the previous layer's output (not yet added), residual: the stream before it (None
        at the first layer). Returns the same pair."""
        if self.block == "post":
            stream = x if residual is None else x + residual
            h = self._scaled(self.post_attention_layernorm(self.self_attn(stream, cos, sin, ctx)))
            stream = stream + h
            return self._scaled(self.post_feedforward_layernorm(self.ffn(stream))), stream
        if residual is None:
            h, residual = self.input_layernorm(x), x
        else:
            h, residual = self.input_layernorm.add_forward(x, residual)
        h = self.self_attn(h, cos, sin, ctx)
        if self.block == "sandwich":
            h = self.post_attention_layernorm(h)
            h, residual = self.pre_feedforward_layernorm.add_forward(h, residual)
            return self.post_feedforward_layernorm(self.ffn(h)), residual
        h, residual = self.post_attention_layernorm.add_forward(self._scaled(h), residual)
        return self._scaled(self.ffn(h)), residual

    def _scaled(self, h):
        return h * self.residual_scale if self.residual_scale != 1.0 else h
