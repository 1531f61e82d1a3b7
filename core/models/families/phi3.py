"""Phi-3 / Phi-3.5 / Phi-4 (and Phi-4-mini): Llama with q/k/v stored as one qkv_proj and
gate/up as one gate_up_proj, LongRoPE scaling, an optional partial rotary dimension and an
optional sliding window on every layer."""

from ..registry import register
from .llama import Llama


@register
class Phi3(Llama):
    name = "phi3"
    model_type = "phi3"
    architectures = ("Phi3ForCausalLM",)
    gguf_arch = "PHI3"
    gguf_permute_qk = False
    fused_qkv = True
    fused_gate_up = True

    @classmethod
    def fields(cls, config: dict) -> dict:
        window = config.get("sliding_window")
        return {**super().fields(config), "qkv_bias": False, "o_bias": False, "mlp_bias": False,
                "sliding_window": int(window) if window else None}  # fmt: skip

    @classmethod
    def hf_extra(cls, spec) -> dict:
        extra = {"sliding_window": spec.sliding_window, "partial_rotary_factor": spec.rope.partial_rotary_factor,
                 # Phi3Config's default pad id (32000) is out of range for a smaller vocabulary.
                 "pad_token_id": None}  # fmt: skip
        if spec.rope.kind == "longrope":
            extra["original_max_position_embeddings"] = spec.rope.original_max_position
        return extra
