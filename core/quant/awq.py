"""AWQ (Lin et al. 2023): protect the weights that meet large activations by scaling them
up before rounding (and the activations down by as much, folded into the op before), then
shrink each group's range where clipping outliers lowers the output error. The final
rounding is plain RTN on the scaled, clipped weights: AWQ changes WHAT is rounded.

Per decoder layer, on a sample of the calibration windows:
  1. q/k/v: s from input_layernorm's output, loss on the attention block's output; s folds
     into input_layernorm's weight.
  2. o_proj: only when v_proj's output feeds it one-to-one (no GQA); s folds into v_proj's rows.
  3. gate/up: loss on the MLP's output; s folds into post_attention_layernorm.
  4. down_proj: s folds into up_proj's rows (silu(gate) * up is linear in up).
  5. Clipping for every linear but q/k (their errors pass through softmax; AutoAWQ skips them too).
The next layer's input comes from this layer with scaled (unrounded) weights, as in AutoAWQ.
"""

import torch

from . import layers
from .config import QuantConfig
from .gptq_layers import LinearResult, set_weight
from .grid import fake_quantize_grouped, grid_params, grouped, quantize_rtn

NUM_ALPHAS = 20  # scale exponents 0, 0.05, ..., 0.95
CLIP_STEPS, CLIP_MAX_SHRINK = 20, 0.5  # try max |w| x (1 - i/20) for i < 10
CLIP_TOKENS = 512


def search_scale(inputs, weights, run_block, target, config: QuantConfig) -> torch.Tensor:
    """The per-input-channel scale s = mean|x|^alpha (normalised) minimising the block's
    output error when `weights` are replaced by Q(W * s) / s. run_block(list of weights)
    -> the block's output with them."""
    x_mean = inputs.abs().float().mean(0)  # [in]
    best, best_loss = torch.ones_like(x_mean), float("inf")
    for i in range(NUM_ALPHAS):
        s = x_mean.pow(i / NUM_ALPHAS).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        trial = [fake_quantize_grouped(w * s, config.bits, config.group_size, config.is_sym) / s for w in weights]
        loss = float((run_block(trial).float() - target.float()).pow(2).mean())
        if loss < best_loss:
            best, best_loss = s, loss
    return best


def search_clip(w: torch.Tensor, inputs: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """Per (row, group) the range max |w| x shrink minimising that group's share of the output
    error on a few hundred tokens. Returns the clipped weight [out, in]."""
    step = max(inputs.shape[0] // CLIP_TOKENS, 1)
    x = inputs[::step][:CLIP_TOKENS].float()  # [n, in]
    wg = grouped(w, config.group_size)  # [out, G, g]
    xg = grouped(x, config.group_size).transpose(0, 1)  # [G, n, g]
    wt = wg.transpose(0, 1)  # [G, out, g]
    reference = torch.bmm(wt, xg.transpose(1, 2))  # [G, out, n]: each group's partial output
    max0 = wg.abs().amax(-1, keepdim=True)  # [out, G, 1]
    best_err = torch.full(max0.shape[:2], float("inf"))
    best_max = max0.clone()
    for i in range(int(CLIP_STEPS * CLIP_MAX_SHRINK)):
        limit = max0 * (1 - i / CLIP_STEPS)
        clipped = torch.maximum(torch.minimum(wg, limit), -limit)
        scale, zero = grid_params(clipped, config.bits, config.is_sym)
        q = scale[..., None] * (torch.clamp(torch.round(clipped / scale[..., None]) + zero[..., None], 0, 2**config.bits - 1) - zero[..., None])
        err = (torch.bmm(q.transpose(0, 1), xg.transpose(1, 2)) - reference).pow(2).mean(-1).t()  # [out, G]
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_max = torch.where(better[..., None], limit, best_max)
    return torch.maximum(torch.minimum(wg, best_max), -best_max).reshape(w.shape)


def _scale_group(master, work, names, s: torch.Tensor) -> None:
    for name in names:
        set_weight(master, work, name, layers.linear(master, name).weight.float() * s)


def _fold_into_norm(master, work, norm_name: str, s: torch.Tensor) -> None:
    with torch.no_grad():
        for layer in (master, work):
            norm = layer.get_submodule(norm_name)
            norm.weight.copy_(norm.weight.float() / s)


def _fold_into_rows(master, work, name: str, s: torch.Tensor) -> None:
    """The op before produces the channels s divides: divide its output rows (and bias)."""
    with torch.no_grad():
        for layer in (master, work):
            lin = layers.linear(layer, name)
            lin.weight.copy_(lin.weight.float() / s[:, None])
            if lin.bias is not None:
                lin.bias.copy_(lin.bias.float() / s)


def _swap(work, names, weights):
    """Run with trial weights in the working copy: returns a restore function."""
    saved = [layers.linear(work, n).weight.detach().clone() for n in names]
    with torch.no_grad():
        for n, w in zip(names, weights, strict=True):
            layers.linear(work, n).weight.copy_(w)

    def restore():
        with torch.no_grad():
            for n, w in zip(names, saved, strict=True):
                layers.linear(work, n).weight.copy_(w)

    return restore


def _searched(master, work, names, inputs, block, config):
    weights = [layers.linear(master, n).weight.detach().float() for n in names]
    target = block()

    def run(trial):
        restore = _swap(work, names, trial)
        try:
            return block()
        finally:
            restore()

    return search_scale(inputs, weights, run, target, config)


@torch.inference_mode()
def awq_layer(master, work, x, batch, search: layers.Batch, config: QuantConfig, prefix: str):
    """Scale, clip and round one layer; x [B*T, h] its input. Returns (the scaled fp layer's
    output on all of x, {full linear name: LinearResult})."""
    xs = x[: search.num_windows * search.seq_len]
    attn = work.self_attn
    # 1. q/k/v against the attention output.
    h1 = layers.attn_input(work, xs)
    s = _searched(master, work, layers.QKV, h1, lambda: layers.attention(work, h1, search), config)
    _fold_into_norm(master, work, "input_layernorm", s)
    _scale_group(master, work, layers.QKV, s)
    # 2. o_proj, where v_proj's channels are its inputs one-to-one.
    h1 = layers.attn_input(work, xs)
    a = layers.attn_core(work, h1, search)
    if attn.v_proj.weight.shape[0] == attn.o_proj.weight.shape[1]:
        s = _searched(master, work, layers.O_PROJ, a, lambda: attn.o_proj(a), config)
        _fold_into_rows(master, work, "self_attn.v_proj", s)
        _scale_group(master, work, layers.O_PROJ, s)
        a = layers.attn_core(work, h1, search)
    # 3. gate/up against the MLP output.
    x2 = xs + attn.o_proj(a)
    h2 = layers.mlp_input(work, x2)
    s = _searched(master, work, layers.GATE_UP, h2, lambda: layers.mlp(work, h2), config)
    _fold_into_norm(master, work, "post_attention_layernorm", s)
    _scale_group(master, work, layers.GATE_UP, s)
    # 4. down_proj against its own output.
    h2 = layers.mlp_input(work, x2)
    m = layers.mlp_core(work, h2)
    s = _searched(master, work, layers.DOWN, m, lambda: work.mlp.down_proj(m), config)
    _fold_into_rows(master, work, "mlp.up_proj", s)
    _scale_group(master, work, layers.DOWN, s)
    m = layers.mlp_core(work, h2)

    # 5. clip, round, and measure. The next layer sees the scaled, unrounded layer.
    out = layers.forward(work, x, batch)
    inputs = {"self_attn.q_proj": h1, "self_attn.k_proj": h1, "self_attn.v_proj": h1, "self_attn.o_proj": a}
    inputs |= {"mlp.gate_proj": h2, "mlp.up_proj": h2, "mlp.down_proj": m}
    results = {}
    for group in layers.GROUPS:
        for name in group:
            if config.skips(prefix + name):
                continue
            w = layers.linear(master, name).weight.detach().float()
            clipped = w if name in ("self_attn.q_proj", "self_attn.k_proj") else search_clip(w, inputs[name], config)
            weight = quantize_rtn(clipped, config.bits, config.group_size, config.is_sym)
            q = weight.dequantize()
            x_in = inputs[name][:: max(inputs[name].shape[0] // 4096, 1)].float()
            ref = x_in @ w.t()
            error = float((x_in @ (w - q).t()).pow(2).sum() / ref.pow(2).sum().clamp(min=1e-30))
            results[prefix + name] = LinearResult(weight, error)
            set_weight(master, work, name, q)
    return out, results
