"""Qwen2 / Qwen2.5: Llama with q/k/v biases, and sliding windows on the layers layer_types marks."""

from ..registry import register
from ..spec import SLIDING
from .llama import Llama, layer_types_from_config


@register
class Qwen2(Llama):
    name = "qwen2"
    model_type = "qwen2"
    architectures = ("Qwen2ForCausalLM",)
    gguf_arch = "QWEN2"
    gguf_permute_qk = False

    @classmethod
    def fields(cls, config: dict) -> dict:
        fields = {**super().fields(config), "qkv_bias": True, "o_bias": False}
        return {**fields, **windows(config, fields["num_layers"])}

    @classmethod
    def hf_extra(cls, spec) -> dict:
        sliding = SLIDING in spec.layer_types
        extra = {"use_sliding_window": sliding, "sliding_window": spec.sliding_window}
        return {**extra, "layer_types": list(spec.layer_types)} if spec.layer_types else extra


def windows(config: dict, num_layers: int) -> dict:
    """Qwen's windows: only with use_sliding_window, on the layers layer_types marks (older
    configs: from max_window_layers on)."""
    if not config.get("use_sliding_window"):
        return {"sliding_window": None, "layer_types": ()}
    types = layer_types_from_config(config, num_layers)
    if not types:
        first = int(config.get("max_window_layers", num_layers))
        types = tuple(SLIDING if i >= first else "full_attention" for i in range(num_layers))
    window = config.get("sliding_window")
    return {"sliding_window": int(window) if window and SLIDING in types else None, "layer_types": types}
