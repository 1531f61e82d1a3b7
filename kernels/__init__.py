"""Numeric kernels behind one dispatch: each op has a pure-torch reference (the spec)
and, where it pays, a faster path with the same signature, tested against the reference.

Imports neither llmtool.cli nor llmtool.core.
"""

from .activation import silu_and_mul, silu_and_mul_ref
from .attention import varlen_attention, varlen_attention_ref
from .dispatch import reference_kernels, use_fast_path
from .norm import add_rms_norm, add_rms_norm_ref, rms_norm, rms_norm_ref
from .paged_attention import (
    PagedAttentionPlan,
    paged_attention,
    paged_attention_ref,
    plan_paged_attention,
    write_kv,
    write_kv_ref,
)
from .quant_linear import QuantLinear, quant_linear_ref
from .rotary import apply_rotary, apply_rotary_ref, apply_rotary_signed, signed_sin

__all__ = [
    "add_rms_norm",
    "add_rms_norm_ref",
    "reference_kernels",
    "use_fast_path",
    "silu_and_mul",
    "silu_and_mul_ref",
    "apply_rotary_signed",
    "signed_sin",
    "PagedAttentionPlan",
    "QuantLinear",
    "quant_linear_ref",
    "plan_paged_attention",
    "apply_rotary",
    "apply_rotary_ref",
    "paged_attention",
    "paged_attention_ref",
    "rms_norm",
    "rms_norm_ref",
    "varlen_attention",
    "varlen_attention_ref",
    "write_kv",
    "write_kv_ref",
]
