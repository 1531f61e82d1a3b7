"""Granite (3.x): Llama with four multipliers: embeddings, attention scale, each block's
output before the residual add, and logits (divided by logits_scaling)."""

from ..registry import register
from .llama import Llama


@register
class Granite(Llama):
    name = "granite"
    model_type = "granite"
    architectures = ("GraniteForCausalLM",)
    gguf_arch = "GRANITE"

    @classmethod
    def fields(cls, config: dict) -> dict:
        return {
            **super().fields(config),
            "embed_scale": float(config.get("embedding_multiplier", 1.0)),
            "attn_scale": float(config.get("attention_multiplier", 1.0)),
            "residual_scale": float(config.get("residual_multiplier", 1.0)),
            "logit_scale": 1.0 / float(config.get("logits_scaling", 1.0)),
        }

    @classmethod
    def hf_extra(cls, spec) -> dict:
        return {**super().hf_extra(spec), "embedding_multiplier": spec.embed_scale,
                "attention_multiplier": spec.attn_scale, "residual_multiplier": spec.residual_scale,
                "logits_scaling": 1.0 / spec.logit_scale}  # fmt: skip
