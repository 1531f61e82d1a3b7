"""Mistral: Llama with an optional sliding window on every layer (v0.1: 4096)."""

from ..registry import register
from .llama import Llama


@register
class Mistral(Llama):
    name = "mistral"
    model_type = "mistral"
    architectures = ("MistralForCausalLM",)

    @classmethod
    def fields(cls, config: dict) -> dict:
        window = config.get("sliding_window")
        return {**super().fields(config), "o_bias": False, "qkv_bias": False,
                "sliding_window": int(window) if window else None}  # fmt: skip

    @classmethod
    def hf_extra(cls, spec) -> dict:
        return {"sliding_window": spec.sliding_window}
