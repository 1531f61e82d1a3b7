"""Qwen3-MoE (30B-A3B, 235B-A22B): Qwen3 with a sparse MLP on every layer; the top-k weights
are renormalised only with norm_topk_prob."""

from ...errors import ModelError
from ..registry import register
from ..spec import MoESpec
from .qwen3 import Qwen3


@register
class Qwen3Moe(Qwen3):
    name = "qwen3_moe"
    model_type = "qwen3_moe"
    architectures = ("Qwen3MoeForCausalLM",)
    gguf_arch = "QWEN3MOE"

    @classmethod
    def fields(cls, config: dict) -> dict:
        if int(config.get("decoder_sparse_step", 1)) != 1 or config.get("mlp_only_layers"):
            raise ModelError("Qwen3-MoE with dense layers (decoder_sparse_step, mlp_only_layers) is not supported yet")
        moe = MoESpec(
            # transformers 5 writes num_local_experts; the Hub's configs num_experts.
            num_experts=int(config.get("num_experts") or config["num_local_experts"]),
            top_k=int(config["num_experts_per_tok"]),
            intermediate_size=int(config["moe_intermediate_size"]),
            renormalize=bool(config.get("norm_topk_prob", False)),
        )
        return {**super().fields(config), "moe": moe}

    @classmethod
    def hf_extra(cls, spec) -> dict:
        moe = spec.moe
        return {**super().hf_extra(spec), "num_experts": moe.num_experts, "num_experts_per_tok": moe.top_k,
                "moe_intermediate_size": moe.intermediate_size, "norm_topk_prob": moe.renormalize,
                "decoder_sparse_step": 1, "mlp_only_layers": []}  # fmt: skip
