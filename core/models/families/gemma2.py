"""Gemma 2: sandwich norms (each block's output normed before the residual add), norms that
scale by (1 + weight), embeddings times sqrt(hidden), GELU-tanh, queries scaled by
query_pre_attn_scalar ** -0.5, tanh soft-capping of attention scores and final logits, and
local (sliding) and global layers alternating."""

from ..registry import register
from ..spec import FULL, SLIDING
from .llama import Llama, layer_types_from_config


@register
class Gemma2(Llama):
    name = "gemma2"
    model_type = "gemma2"
    architectures = ("Gemma2ForCausalLM",)
    gguf_arch = "GEMMA2"
    gguf_permute_qk = False

    @classmethod
    def fields(cls, config: dict) -> dict:
        fields = super().fields(config)
        n = fields["num_layers"]
        types = layer_types_from_config(config, n) or cls.default_layer_types(config, n)
        window = config.get("sliding_window")
        return {
            **fields,
            "tie_word_embeddings": bool(config.get("tie_word_embeddings", True)),
            "o_bias": False,
            "block": "sandwich",
            "norm_offset": 1.0,
            "embed_scale": fields["hidden_size"] ** 0.5,
            "attn_scale": float(config.get("query_pre_attn_scalar") or fields["head_dim"]) ** -0.5,
            "attn_softcap": _opt_float(config.get("attn_logit_softcapping")),
            "final_softcap": _opt_float(config.get("final_logit_softcapping")),
            "layer_types": types,
            "sliding_window": int(window) if window and SLIDING in types else None,
        }

    @classmethod
    def default_layer_types(cls, config: dict, num_layers: int) -> tuple[str, ...]:
        return tuple(SLIDING if i % 2 == 0 else FULL for i in range(num_layers))

    @classmethod
    def hf_extra(cls, spec) -> dict:
        return {
            "hidden_activation": "gelu_pytorch_tanh",
            "query_pre_attn_scalar": round(spec.attn_scale**-2),
            "attn_logit_softcapping": spec.attn_softcap,
            "final_logit_softcapping": spec.final_softcap,
            "sliding_window": spec.sliding_window,
            "layer_types": [spec.layer_type(i) for i in range(spec.num_layers)],
            "attention_bias": spec.qkv_bias,
        }


def _opt_float(value) -> float | None:
    return float(value) if value else None
