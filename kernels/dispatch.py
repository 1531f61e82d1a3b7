"""Which implementation of an op runs: the reference, a Triton kernel or a CPU fast path.

Every op in kernels/ has a pure-torch reference (the spec). On CUDA, where Triton is
installed, the op runs its Triton kernel (kernels/triton/); on CPU, its native or
torch fast path. `reference_kernels()` (a context manager) or LLMTOOL_KERNELS=reference
(read once per process) forces the reference everywhere, which is how tests show that
switching paths leaves an engine's greedy tokens unchanged.

Per op (reference / Triton on CUDA / CPU fast path):

    paged_attention   paged_attention_ref / triton.paged_attention / csrc/paged_decode.cpp + SDPA
    write_kv          write_kv_ref / triton.write_kv / index_copy_
    quant_linear      quant_linear_ref / triton.quant_matmul (GPTQ, AWQ, int8) / int4pack_mm
    linear            F.linear / F.linear (cuBLAS) / csrc/gemv.cpp (<= 8 rows) + oneDNN packed
    add_rms_norm      add_rms_norm_ref / triton.add_rms_norm / csrc/elementwise.cpp
    rms_norm          rms_norm_ref / triton.add_rms_norm / csrc/elementwise.cpp
    rotary            apply_rotary_ref / triton.rotary / roll + signed sin (4 torch ops)
    silu_and_mul      silu_and_mul_ref / torch / csrc/elementwise.cpp
"""

import contextlib
import contextvars
import functools
import os

import torch

_FORCE_REFERENCE = contextvars.ContextVar("llmtool_force_reference", default=False)


@functools.cache
def _env_forces_reference() -> bool:
    return os.environ.get("LLMTOOL_KERNELS", "").lower() == "reference"


def use_fast_path() -> bool:
    """False inside reference_kernels() or under LLMTOOL_KERNELS=reference."""
    return not (_FORCE_REFERENCE.get() or _env_forces_reference())


@contextlib.contextmanager
def reference_kernels(enabled: bool = True):
    """Run every kernels/ op on its reference within the block (this thread / context)."""
    token = _FORCE_REFERENCE.set(enabled)
    try:
        yield
    finally:
        _FORCE_REFERENCE.reset(token)


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(t: torch.Tensor) -> bool:
    """Triton kernels serve CUDA tensors (and every tensor under TRITON_INTERPRET=1 in tests,
    which call kernels.triton directly)."""
    return t.device.type == "cuda" and use_fast_path() and triton_available()
