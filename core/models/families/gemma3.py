"""Gemma 3 (text): Gemma 2 with a per-head RMSNorm on q and k instead of attention
soft-capping, five local layers to one global, and a rope base of its own for the local
layers (rope_local_base_freq, or rope_parameters per layer type)."""

from ..registry import register
from ..spec import FULL, SLIDING
from .gemma2 import Gemma2
from .llama import rope_from_config


@register
class Gemma3(Gemma2):
    name = "gemma3"
    model_type = "gemma3_text"
    architectures = ("Gemma3ForCausalLM",)
    gguf_arch = "GEMMA3"

    @classmethod
    def fields(cls, config: dict) -> dict:
        fields = super().fields(config)
        local_theta = config.get("rope_local_base_freq")
        local = rope_from_config(config, SLIDING, float(local_theta) if local_theta else None)
        if local_theta is not None:  # older configs: rope_scaling is the global layers' only
            from dataclasses import replace

            local = replace(local, kind="default", factor=1.0)
        return {**fields, "qk_norm": "head", "local_rope": local, "rope": rope_from_config(config, FULL)}

    @classmethod
    def default_layer_types(cls, config: dict, num_layers: int) -> tuple[str, ...]:
        pattern = int(config.get("sliding_window_pattern", 6))
        return tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(num_layers))

    @classmethod
    def hf_extra(cls, spec) -> dict:
        extra = super().hf_extra(spec)
        extra["rope_local_base_freq"] = spec.local_rope.theta if spec.local_rope else spec.rope.theta
        return extra
