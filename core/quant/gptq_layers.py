"""GPTQ over a decoder layer, true-sequentially: each group of linears is quantized from
the inputs it sees once the linears before it in the layer are ALREADY quantized (q/k/v,
then o_proj, then gate/up, then down_proj), so later solves correct earlier rounding; and
the layer's output (the next layer's input) comes from the quantized layer.

Linears sharing an input are solved as one row-stacked matrix (rows are independent given
H): same result as one solve each, a third of the sequential column loops.
"""

from dataclasses import dataclass

import torch

from . import layers
from .config import QuantConfig
from .gptq import Hessian, gptq_quantize
from .grid import QuantizedWeight

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
def gptq_layer(master, work, x: torch.Tensor, batch: layers.Batch, config: QuantConfig, prefix: str) -> tuple[torch.Tensor, dict]:
    """Quantize one layer; x is its input [B*T, h] in the working dtype. Returns (the quantized
    layer's output, {full linear name: LinearResult})."""
    results: dict[str, LinearResult] = {}
    h1 = layers.attn_input(work, x)
    quantize_group(master, work, layers.QKV, h1, config, results, prefix)
    a = layers.attn_core(work, h1, batch)
    del h1
    quantize_group(master, work, layers.O_PROJ, a, config, results, prefix)
    x = x + work.self_attn.o_proj(a)
    del a
    h2 = layers.mlp_input(work, x)
    quantize_group(master, work, layers.GATE_UP, h2, config, results, prefix)
    m = layers.mlp_core(work, h2)
    del h2
    quantize_group(master, work, layers.DOWN, m, config, results, prefix)
    return x + work.mlp.down_proj(m), results
