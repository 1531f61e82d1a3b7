"""GPTQ over a decoder layer, true-sequentially: each group of linears is quantized from
the inputs it sees once the linears before it in the layer are ALREADY quantized (Llama:
q/k/v, then o_proj, then gate/up, then down_proj; MoE: each expert's gate/up, then its
down), so later solves correct earlier rounding; and the layer's output (the next layer's
input) comes from the quantized layer. The inputs come from hooks on the layer's own
forward (layers.py).

Linears sharing an input are solved as one row-stacked matrix (rows are independent given
H): same result as one solve each, a third of the sequential column loops.
"""

from dataclasses import dataclass

import torch

from . import layers
from .config import QuantConfig
from .gptq import Hessian, gptq_quantize
from .grid import QuantizedWeight, quantize_rtn

_HESSIAN_ROWS = 8192  # tokens per fp32 copy while accumulating H (bounds the temporary)


@dataclass
class LinearResult:
    weight: QuantizedWeight
    error: float  # relative output error on the calibration inputs: |X(W-Q)^T|^2 / |XW^T|^2
    damp: float | None = None  # GPTQ: the damping Cholesky needed


def hessian(inputs: torch.Tensor) -> Hessian:
    h = Hessian(inputs.shape[-1])
    for start in range(0, inputs.shape[0], _HESSIAN_ROWS):
        h.add(inputs[start : start + _HESSIAN_ROWS])
    return h


def relative_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """|X(W-Q)^T|^2 / |XW^T|^2 from H ~ X^T X alone: trace(D H D^T) / trace(W H W^T)."""
    d = w - q
    return float(((d @ h) * d).sum() / ((w @ h) * w).sum().clamp(min=1e-30))


def split_rows(weight: QuantizedWeight, sizes: list[int]) -> list[QuantizedWeight]:
    out, start = [], 0
    for n in sizes:
        rows = slice(start, start + n)
        out.append(QuantizedWeight(weight.q[rows], weight.scales[:, rows], weight.zeros[:, rows], weight.g_idx.clone(), weight.bits))
        start += n
    return out


def set_weight(master: torch.nn.Module, work: torch.nn.Module, name: str, w: torch.Tensor) -> None:
    """Write a (dequantized or rescaled) fp32 weight into the master layer and its working copy."""
    with torch.no_grad():
        layers.linear(master, name).weight.copy_(w)
        layers.linear(work, name).weight.copy_(w)


def quantize_group(master, work, names, inputs: torch.Tensor, config: QuantConfig, results: dict, prefix: str):
    names = [n for n in names if not config.skips(prefix + n)]
    if not names:
        return
    h = hessian(inputs).h
    weights = [layers.linear(master, n).weight.detach().float() for n in names]
    stacked = torch.cat(weights)
    solved = gptq_quantize(
        stacked, h, bits=config.bits, group_size=config.group_size, sym=config.is_sym,
        desc_act=config.desc_act, damp=config.damp,
    )
    parts = split_rows(solved.weight, [w.shape[0] for w in weights])
    for name, w, part in zip(names, weights, parts, strict=True):
        q = part.dequantize()
        results[prefix + name] = LinearResult(part, relative_error(w, q, h), solved.damp)
        set_weight(master, work, name, q)


@torch.inference_mode()
def gptq_layer(master, work, run, stream, config: QuantConfig, prefix: str) -> tuple[layers.Stream, dict]:
    """Quantize one layer; run(module, stream) is its real forward over the calibration
    windows, stream its input in the working dtype. Returns (the quantized layer's output,
    {full linear name: LinearResult}).

    One forward finds the groups (linears sharing an input); a second quantizes each group in
    its first linear's pre-hook, from the input it is about to read, so every group is solved
    on the outputs of the groups before it ALREADY quantized, and that forward's output is the
    quantized layer's. Experts no calibration token reached are rounded (RTN)."""
    names = [n for n in layers.linear_names(work) if not config.skips(prefix + n)]
    groups = layers.discover_groups(work, names, lambda: run(work, stream))
    group_of = {name: i for i, group in enumerate(groups) for name in group}
    done: set[int] = set()
    results: dict[str, LinearResult] = {}

    def solve(name, x):
        g = group_of.get(name)
        if g is not None and g not in done:
            done.add(g)
            quantize_group(master, work, groups[g], x.reshape(-1, x.shape[-1]), config, results, prefix)

    with layers.Hooks(work, names, solve):
        out = run(work, stream)
    for name in names:
        if prefix + name not in results:
            rtn_linear(master, work, name, config, results, prefix)
    return out, results


def rtn_linear(master, work, name: str, config: QuantConfig, results: dict, prefix: str) -> None:
    """Round to nearest (GPTQ v1's grid). No calibration data: the error is the weight's own,
    |W - Q|^2 / |W|^2."""
    w = layers.linear(master, name).weight.detach().float()
    weight = quantize_rtn(w, config.bits, config.group_size, config.is_sym, min_zero=1)  # GPTQ v1 file
    q = weight.dequantize()
    results[prefix + name] = LinearResult(weight, float((w - q).pow(2).sum() / w.pow(2).sum().clamp(min=1e-30)))
    set_weight(master, work, name, q)
