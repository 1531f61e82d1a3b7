"""AWQ (Lin et al. 2023): protect the weights that meet large activations by scaling them
up before rounding (and the activations down by as much, folded into the op before), then
shrink each group's range where clipping outliers lowers the output error. The final
rounding is plain RTN on the scaled, clipped weights: AWQ changes WHAT is rounded.

Per decoder layer, on a sample of the calibration windows, one forward of the layer's own
modules (hooks, layers.py) records every linear's input; then, in the order data flows, each
scalable group gets s (loss on the output of the block it opens) folded into the op before
it. Where s can fold comes from the block recipe (plan()):
  1. the attention's q/k/v (or Phi-3's qkv_proj): into the norm before attention
     (input_layernorm in "pre" and "sandwich" blocks); "post" blocks (OLMo 2) have no norm
     there, the input is the residual stream itself: not scaled.
  2. o_proj: into v_proj's rows, only when v's channels are o_proj's inputs one-to-one (no GQA).
  3. a dense MLP's gate/up: into the norm before the MLP (post_attention_layernorm in "pre",
     pre_feedforward_layernorm in "sandwich"; none in "post": not scaled). MoE experts'
     gate/up: not scaled, the router reads the same norm output (and is never touched).
  4. every MLP's (each expert's) down_proj: into up_proj's rows (act(gate) * up is linear in up).
  5. Clipping for every linear but q/k (their errors pass through softmax; AutoAWQ skips them too).
Folding is exact, so the inputs recorded before a fold stay valid for the groups after it;
a scaled group's own input becomes x / s. The next layer's input comes from this layer with
scaled (unrounded) weights, as in AutoAWQ.
"""

from dataclasses import dataclass

import torch

from ..models.layers.attention import Attention
from ..models.layers.mlp import MLP
from . import layers
from .config import QuantConfig
from .gptq_layers import LinearResult, rtn_linear, set_weight
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


@dataclass(frozen=True)
class Step:
    names: tuple[str, ...]  # the linears scaled together (one shared input)
    fold: tuple | None  # ("norm", name) | ("rows", linear name, first row, row count) | None: not scaled
    inspect: str  # the module whose output the loss compares (a block, or the linear itself)


_NORM_BEFORE = {  # block recipe -> (norm before attention, norm before the MLP)
    "pre": ("input_layernorm", "post_attention_layernorm"),
    "sandwich": ("input_layernorm", "pre_feedforward_layernorm"),
    "post": (None, None),
}


def plan(layer) -> list[Step]:
    """The layer's scaling steps, in the order data flows, from its block recipe and modules."""
    attn_norm, mlp_norm = _NORM_BEFORE[layer.block]
    attn: Attention = layer.self_attn
    steps = []
    q_size, kv_size = attn.sizes[0], attn.sizes[1]
    if attn.qkv_proj is not None:  # stored fused (Phi-3)
        qkv, v_rows = ("self_attn.qkv_proj",), ("rows", "self_attn.qkv_proj", q_size + kv_size, kv_size)
    else:
        qkv, v_rows = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("rows", "self_attn.v_proj", 0, kv_size)
    steps.append(Step(qkv, ("norm", attn_norm) if attn_norm else None, "self_attn"))
    one_to_one = attn.num_heads == attn.num_kv_heads
    steps.append(Step(("self_attn.o_proj",), v_rows if one_to_one else None, "self_attn.o_proj"))
    ffn = layer.ffn
    if isinstance(ffn, MLP):
        mlps = [(layer.mlp_name, mlp_norm)]
    else:  # SparseMoE
        mlps = [(f"{layer.mlp_name}.experts.{e}", None) for e in range(len(ffn.experts))]
    for name, norm in mlps:
        mlp: MLP = layer.get_submodule(name)
        gate, up, down = (f"{name}.{n}" for n in mlp.names)
        i = mlp.intermediate_size
        if mlp.gate_up_proj is not None:  # stored fused (Phi-3)
            gate_up, up_rows = (f"{name}.gate_up_proj",), ("rows", f"{name}.gate_up_proj", i, i)
        else:
            gate_up, up_rows = (gate, up), ("rows", up, 0, i)
        steps.append(Step(gate_up, ("norm", norm) if norm else None, name))
        steps.append(Step((down,), up_rows, down))
    return steps


def _scale_group(master, work, names, s: torch.Tensor) -> None:
    for name in names:
        set_weight(master, work, name, layers.linear(master, name).weight.float() * s)


def _fold(master, work, fold: tuple, s: torch.Tensor) -> None:
    """Divide the channels s multiplies out of the op before: a norm's weight (Gemma's
    (offset + w) as a whole) or a linear's output rows (and bias)."""
    with torch.no_grad():
        for layer in (master, work):
            if fold[0] == "norm":
                norm = layer.get_submodule(fold[1])
                norm.weight.copy_((norm.weight.float() + norm.offset) / s - norm.offset)
                continue
            _, name, start, count = fold
            lin = layers.linear(layer, name)
            rows = slice(start, start + count)
            lin.weight[rows] = lin.weight[rows].float() / s[:, None]
            if lin.bias is not None:
                lin.bias[rows] = lin.bias[rows].float() / s


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


def _no_clip(name: str) -> bool:
    """q and k (fused or not): their rounding passes through softmax; AutoAWQ leaves them unclipped."""
    last = name.rsplit(".", 1)[-1]
    return last in ("q_proj", "k_proj", "qkv_proj")


@torch.inference_mode()
def awq_layer(master, work, run, stream, search_run, search_stream, config: QuantConfig, prefix: str):
    """Scale, clip and round one layer. run(module, stream) is its real forward on all the
    calibration windows (stream: its input), search_run / search_stream the same on the
    search sample. Returns (the scaled fp layer's output on all windows, {full linear name:
    LinearResult})."""
    steps = plan(work)
    names = layers.linear_names(work)
    inspected = [s.inspect for s in steps if not isinstance(work.get_submodule(s.inspect), torch.nn.Linear)]
    inputs: dict[str, torch.Tensor] = {}
    block_args: dict[str, tuple] = {}
    with layers.Hooks(work, names, lambda n, x: inputs.__setitem__(n, x)), \
         layers.Hooks(work, inspected, lambda n, a: block_args.__setitem__(n, a), with_args=True):  # fmt: skip
        search_run(work, search_stream)

    for step in steps:
        x = inputs.get(step.names[0])
        if step.fold is None or x is None:  # nothing to fold into, or no token reached it
            continue
        module = work.get_submodule(step.inspect)
        args = block_args.get(step.inspect, (x,))
        s = _searched(master, work, step.names, x, lambda: module(*args), config)
        _fold(master, work, step.fold, s)
        _scale_group(master, work, step.names, s)
        scaled = (x.float() / s).to(x.dtype)  # the group's input under the fold
        for name in step.names:
            inputs[name] = scaled

    # Clip, round, and measure. The next layer sees the scaled, unrounded layer.
    out = run(work, stream)
    results = {}
    for name in names:
        if config.skips(prefix + name):
            continue
        x_in = inputs.get(name)
        if x_in is None:  # an expert no search token reached: plain rounding
            rtn_linear(master, work, name, config, results, prefix)
            continue
        w = layers.linear(master, name).weight.detach().float()
        clipped = w if _no_clip(name) else search_clip(w, x_in, config)
        weight = quantize_rtn(clipped, config.bits, config.group_size, config.is_sym)
        q = weight.dequantize()
        x_in = x_in[:: max(x_in.shape[0] // 4096, 1)].float()
        ref = x_in @ w.t()
        error = float((x_in @ (w - q).t()).pow(2).sum() / ref.pow(2).sum().clamp(min=1e-30))
        results[prefix + name] = LinearResult(weight, error)
        set_weight(master, work, name, q)
    return out, results
