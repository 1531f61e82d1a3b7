"""OLMo 2: norms after each block instead of before (post_attention_layernorm and
post_feedforward_layernorm normalise the block's output before the residual add), and an
RMSNorm over all of q and all of k (not per head) before rotary."""

from ..registry import register
from .llama import Llama


@register
class Olmo2(Llama):
    name = "olmo2"
    model_type = "olmo2"
    architectures = ("Olmo2ForCausalLM",)
    gguf_arch = "OLMO2"
    gguf_permute_qk = False

    @classmethod
    def fields(cls, config: dict) -> dict:
        return {**super().fields(config), "block": "post", "qk_norm": "full"}
