"""Mixtral: Mistral with a sparse MLP (block_sparse_moe; experts' w1 = gate, w3 = up, w2 =
down), top-k weights always renormalised."""

from ..registry import register
from ..spec import MoESpec
from .mistral import Mistral


@register
class Mixtral(Mistral):
    name = "mixtral"
    model_type = "mixtral"
    architectures = ("MixtralForCausalLM",)
    moe_block = "block_sparse_moe"
    expert_names = ("w1", "w3", "w2")

    @classmethod
    def fields(cls, config: dict) -> dict:
        moe = MoESpec(
            num_experts=int(config["num_local_experts"]),
            top_k=int(config["num_experts_per_tok"]),
            intermediate_size=int(config["intermediate_size"]),
            renormalize=True,
        )
        return {**super().fields(config), "moe": moe}

    @classmethod
    def hf_extra(cls, spec) -> dict:
        return {**super().hf_extra(spec), "num_local_experts": spec.moe.num_experts,
                "num_experts_per_tok": spec.moe.top_k}  # fmt: skip
