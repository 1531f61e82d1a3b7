"""Qwen3: Qwen2 without the q/k/v biases, with an RMSNorm on each head of q and k before rotary."""

from ..registry import register
from .qwen2 import Qwen2


@register
class Qwen3(Qwen2):
    name = "qwen3"
    model_type = "qwen3"
    architectures = ("Qwen3ForCausalLM",)
    gguf_arch = "QWEN3"

    @classmethod
    def fields(cls, config: dict) -> dict:
        bias = bool(config.get("attention_bias", False))
        return {**super().fields(config), "qkv_bias": bias, "o_bias": bias, "qk_norm": "head"}

    @classmethod
    def hf_extra(cls, spec) -> dict:
        return {**super().hf_extra(spec), "attention_bias": spec.qkv_bias}
