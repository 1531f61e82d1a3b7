"""LogitsHead: the lm_head product with fp32 output, whatever the model's dtype.

A bf16 logit is coarse: at typical magnitudes (10-20) bf16 steps are 0.06-0.125, so logprobs
come in steps of a tenth of a nat, different tokens tie, and which of two tied tokens greedy
decoding picks can depend on the batch. Here the hidden state and the weight stay as they
are (bf16 values are exact in fp32), the product accumulates in fp32 and is never rounded:
- fp32 models: the model's own head (already fp32);
- CUDA: torch.mm with out_dtype=float32 (fp32 accumulate, fp32 result), where torch has it;
- elsewhere (CPU bf16/fp16): an fp32 copy of the head's weight and an fp32 GEMM. The copy costs
  vocab x hidden x 4 bytes (113 MB for SmolLM2-135M); torch has no CPU bf16 GEMM with an fp32
  result, and converting the weight on every call costs 10x the product.
Only the rows that need logits come here (the runner selects them first).
"""

import logging

import torch
import torch.nn.functional as F

from ..models.causal_lm import CausalLM

log = logging.getLogger("llmtool.engine")


class LogitsHead:
    def __init__(self, model: CausalLM, weight: torch.Tensor | None, fp32: bool = True):
        """weight: the head's plain [V, h] weight (read before the model packs it), or None when
        it is no longer at hand; fp32=False keeps the model's own rounding (benchmarks compare)."""
        self.model = model
        self.weight: torch.Tensor | None = None  # used with out_dtype
        self.fp32_weight: torch.Tensor | None = None  # [V, h] fp32 copy
        if not fp32 or model.dtype == torch.float32:
            return
        if weight is None:
            log.warning(
                "the lm_head weight is packed already: logits keep the model's %s rounding", model.dtype
            )
            return
        weight = weight.detach()
        if weight.device.type == "cuda" and _has_out_dtype(weight):
            self.weight = weight
        else:
            self.fp32_weight = weight.float().contiguous()

    @property
    def is_fp32(self) -> bool:
        """Whether logits are exact fp32 accumulations (not rounded to the model's dtype)."""
        return self.model.dtype == torch.float32 or self.weight is not None or self.fp32_weight is not None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, h] in the model's dtype -> logits [N, V] fp32."""
        if self.fp32_weight is not None:
            return self.model.finish_logits(F.linear(hidden.float(), self.fp32_weight))
        if self.weight is not None:
            return self.model.finish_logits(torch.mm(hidden, self.weight.t(), out_dtype=torch.float32))
        return self.model.compute_logits(hidden)


def _has_out_dtype(weight: torch.Tensor) -> bool:
    try:
        x = torch.zeros(1, weight.shape[1], dtype=weight.dtype, device=weight.device)
        return torch.mm(x, weight[:16].t(), out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def head_weight(model: CausalLM) -> torch.Tensor | None:
    """The head's plain [V, h] weight: lm_head's before prepare_for_inference packs it, the
    embedding's when tied; None when only a packed copy is left."""
    if model.spec.tie_word_embeddings:
        return model.model.embed_tokens.weight
    head = model.lm_head
    if isinstance(head, torch.nn.Linear) or not getattr(head, "packed", True):
        return head.weight
    return None
