"""GPTQ (Frantar et al. 2022): quantize a weight column by column, pushing each column's
rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the
layer's inputs, so the layer's OUTPUT on the calibration data moves as little as possible.

H = 2/N sum x x^T is accumulated by `Hessian` from the inputs the layer actually sees (the
pipeline feeds it activations of the already-quantized earlier layers). Rows of W are
independent given H, so projections sharing an input (q/k/v, gate/up) are solved together
as one stacked matrix: the same arithmetic, a third of the column loops.

Not here: capture of activations (pipeline.py), packing (formats.py).
"""

import contextlib
from dataclasses import dataclass

import torch

from ..errors import LlmtoolError
from .grid import QuantizedWeight, fake_quantize, grid_params, max_code, to_codes

_DAMP_RETRIES = 6  # damp x10 each time Cholesky fails: 1% -> 1e4 %, then give up


class Hessian:
    """H = 2/N sum x x^T over calibration tokens, summed in fp32.

    bf16 inputs (the activations of a bf16 forward pass, exact in bf16) are multiplied in bf16
    on slices of _BF16_ROWS tokens: oneDNN accumulates each slice's product in fp32 and rounds
    only the result to bf16 (relative 2^-9, unbiased), which the fp32 sum over ~64 slices then
    averages down to ~3e-4 of H (measured). 3x faster than the fp32 product here, and the
    Hessian was a third of GPTQ's time. Other dtypes go through fp32."""

    _BF16_ROWS = 1024

    def __init__(self, size: int, device=None):
        self.sum = torch.zeros(size, size, dtype=torch.float32, device=device)
        self.num_tokens = 0

    def add(self, x: torch.Tensor) -> None:
        """x [N, size] in any float dtype."""
        x = x.reshape(-1, x.shape[-1])
        if x.dtype == torch.bfloat16:
            for start in range(0, x.shape[0], self._BF16_ROWS):
                part = x[start : start + self._BF16_ROWS]
                self.sum += (part.t() @ part).float()
        else:
            x = x.float()
            self.sum.addmm_(x.t(), x)
        self.num_tokens += x.shape[0]

    @property
    def h(self) -> torch.Tensor:
        return self.sum * (2.0 / max(self.num_tokens, 1))


@dataclass(frozen=True)
class GPTQResult:
    weight: QuantizedWeight
    damp: float  # the damping that let Cholesky succeed (fraction of mean diag H)


def gptq_quantize(
    w: torch.Tensor,
    h: torch.Tensor,
    *,
    bits: int,
    group_size: int,
    sym: bool,
    desc_act: bool = False,
    static_groups: bool = True,
    damp: float = 0.01,
    block_size: int = 128,
    min_zero: int = 1,
    group_aware: bool = True,
) -> GPTQResult:
    """w [out, in], h [in, in] -> codes on the grid (grid.py). desc_act quantizes columns in
    order of decreasing H_ii (the most active inputs first, while there is most freedom to
    compensate). With act-order and static_groups the group ranges are fixed up front in
    natural column order, so g_idx stays i // g and kernels need no input permutation;
    without static_groups each group is the next group_size columns of the act-order, and
    g_idx records that. Without act-order a group's range is taken when GPTQ reaches it,
    from its columns as updated by the error feedback so far. min_zero=1 (the default) keeps
    asymmetric zero points writable in GPTQ v1 (grid.grid_params)."""
    out, cols = w.shape
    g = cols if group_size == -1 else group_size
    maxq = max_code(bits)
    w = w.detach().float().clone()
    h = h.detach().float().clone()

    dead = torch.diag(h) == 0  # inputs never active: their weights cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    static = None  # without act-order, each group's range comes from its error-updated columns
    if (desc_act and static_groups) or group_size == -1:
        # Each natural group's range from the original weights: [out, G] each.
        static = grid_params(w.reshape(out, cols // g, g), bits, sym, min_zero)

    perm = _column_order(torch.diag(h), g, desc_act, group_aware)
    if perm is not None:
        w, h = w[:, perm], h[perm][:, perm]

    hinv, used_damp = _inverse_hessian_factor(h, damp)

    # Groups must not straddle blocks (their range is read from the block's updated columns).
    block = max(g, block_size - block_size % g) if g <= block_size else g
    q = torch.zeros(out, cols, dtype=torch.float32)
    scale_of_col = torch.empty(out, cols)
    zero_of_col = torch.empty(out, cols)
    with _one_thread():
        _column_loop(w, hinv, q, scale_of_col, zero_of_col, static, perm, g, block, bits, sym, min_zero)


    if perm is not None:  # back to natural column order
        inv = torch.argsort(perm)
        q, scale_of_col, zero_of_col = q[:, inv], scale_of_col[:, inv], zero_of_col[:, inv]
    if static is not None:
        g_idx = torch.arange(cols) // g
        scales, zeros = static[0].t(), static[1].t()  # [G, out]
    else:
        if desc_act:
            g_idx = torch.empty(cols, dtype=torch.long)
            g_idx[perm] = torch.arange(cols) // g  # act-order position -> group
        else:  # natural or group-aware order: every group is a natural one
            g_idx = torch.arange(cols) // g
        first = torch.empty(cols // g, dtype=torch.long)  # a column of each group, to read its params
        first[g_idx] = torch.arange(cols)
        scales, zeros = scale_of_col[:, first].t(), zero_of_col[:, first].t()
    assert int(q.max()) <= maxq
    weight = QuantizedWeight(
        q.to(torch.uint8),
        scales.contiguous(),
        zeros.to(torch.int32).contiguous(),
        g_idx.to(torch.int32),
        bits,
    )
    return GPTQResult(weight, used_damp)


SHRINKS = (1.0, 0.95, 0.9, 0.85, 0.8)


def _clipped_params(wg: torch.Tensor, hdiag: torch.Tensor, bits: int, sym: bool, min_zero: int):
    """A group's grid, its range shrunk per row where clipping the largest weights lowers the
    H-weighted rounding error sum_j H_jj (w_j - q_j)^2 (GPTQModel's `mse` option does this with
    an unweighted norm; off there by default)."""
    best_scale, best_zero = grid_params(wg, bits, sym, min_zero)
    best_err = None
    for shrink in SHRINKS:
        scale, zero = (best_scale, best_zero) if shrink == 1.0 else grid_params(wg * shrink, bits, sym, min_zero)
        err = ((fake_quantize(wg, scale[:, None], zero[:, None], bits) - wg).square() * hdiag).sum(1)
        if best_err is None:
            best_err, keep_scale, keep_zero = err, scale, zero
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        keep_scale = torch.where(better, scale, keep_scale)
        keep_zero = torch.where(better, zero, keep_zero)
    return keep_scale, keep_zero


def _column_order(diag: torch.Tensor, g: int, desc_act: bool, group_aware: bool) -> torch.Tensor | None:
    """The order GPTQ visits columns in (None: natural). desc_act: by decreasing H_ii.
    group_aware (GPTQModel's GAR): groups stay the natural ones, visited by decreasing max H_ii,
    each group's columns by decreasing H_ii: most of act-order's gain, and g_idx stays i // g."""
    if desc_act:
        return torch.argsort(diag, descending=True)
    cols = diag.numel()
    if not group_aware or g >= cols:
        return None
    per_group = diag.view(cols // g, g)
    values, local = torch.sort(per_group, dim=1, descending=True, stable=True)
    groups = torch.argsort(values[:, 0], descending=True, stable=True)
    return (local + torch.arange(cols // g)[:, None] * g)[groups].reshape(-1)


def _column_loop(w, hinv, q, scale_of_col, zero_of_col, static, perm, g, block, bits, sym, min_zero) -> None:
    """The sequential heart of GPTQ, in place: quantize column after column of w, spreading
    each column's error over the block's later columns, then the block's over the rest."""
    out, cols = w.shape
    scale = zero = None
    hdiag = 1.0 / torch.diag(hinv).square()  # ~ diag(H) in visiting order: each input's weight in the error
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if static is None and col % g == 0:  # a new group: its range from its columns as updated so far
                scale, zero = _clipped_params(w1[:, i : i + g], hdiag[col : col + g], bits, sym, min_zero)
            elif static is not None:
                natural = int(perm[col]) if perm is not None else col
                scale, zero = static[0][:, natural // g], static[1][:, natural // g]
            wc = w1[:, i]
            codes = to_codes(wc, scale, zero, bits)
            q[:, col] = codes
            scale_of_col[:, col], zero_of_col[:, col] = scale, zero
            err = (wc - scale * (codes - zero)) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]


@contextlib.contextmanager
def _one_thread():
    """The column loop is thousands of ops on vectors of a few hundred floats: splitting each
    over threads costs more than it saves (measured: 576 columns x 960 rows, 0.16 s on one
    thread, 1.5-2.5 s on two of a busy 2-core machine)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _inverse_hessian_factor(h: torch.Tensor, damp: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, raising damp until H is
    numerically positive definite (a few calibration tokens, or duplicated inputs, make H
    singular)."""
    mean_diag = float(torch.diag(h).mean())
    eye = torch.eye(h.shape[0])
    for _ in range(_DAMP_RETRIES):
        try:
            lower = torch.linalg.cholesky(h + damp * mean_diag * eye)
            hinv = torch.cholesky_inverse(lower)
            return torch.linalg.cholesky(hinv, upper=True), damp
        except torch.linalg.LinAlgError:
            damp *= 10
    raise LlmtoolError("GPTQ: the calibration Hessian is not positive definite even with heavy damping")
