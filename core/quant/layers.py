"""Calibration through the model's own modules: a decoder layer runs its real forward
(layers/decoder.py, with a PrefillContext) over the calibration windows, and forward hooks on
its nn.Linear modules see each linear's input while it runs. No second copy of the block:
whatever a family's recipe does (norm placement, q/k norms, GeGLU, MoE routing, fused
Phi-3 projections), calibration sees it because the layer does it.

The stream between layers is the pair DecoderLayer passes, (x, residual), over all windows
packed [B*T, h]: B windows of T tokens each.

Groups: linears that read the SAME input tensor in a forward (q/k/v, gate/up, one expert's
gate/up) are found by watching the hooks: consecutive calls with an identical input object
form one group. A MoE router (SparseMoE.gate) is never a quantizable linear; norms are not
linears.
"""

from collections.abc import Callable

import torch
from torch import nn

from ..models.causal_lm import CausalLM
from ..models.context import PrefillContext
from ..models.layers.moe import SparseMoE

Stream = tuple[torch.Tensor, torch.Tensor | None]  # (x, residual) as DecoderLayer passes them


def linear(module: nn.Module, name: str) -> nn.Linear:
    return module.get_submodule(name)


def routers(module: nn.Module, prefix: str = "") -> set[str]:
    """Names of the MoE routers under module: linears that are never quantized."""
    return {f"{prefix}{name}.gate" if name else f"{prefix}gate" for name, m in module.named_modules() if isinstance(m, SparseMoE)}


def linear_names(layer: nn.Module) -> list[str]:
    """The layer's quantizable linears (every expert's included, routers not), in module order."""
    skip = routers(layer)
    return [name for name, m in layer.named_modules() if isinstance(m, nn.Linear) and name not in skip]


class LayerRunner:
    """Runs decoder layers over the calibration windows: their rotary tables and attention
    context, computed once."""

    def __init__(self, model: CausalLM, num_windows: int, seq_len: int, dtype: torch.dtype):
        self.model, self.num_windows, self.seq_len, self.dtype = model, num_windows, seq_len, dtype
        positions = torch.arange(seq_len).repeat(num_windows)  # [B*T]
        self.tables = model.rope_tables(positions, dtype)
        self.ctx = PrefillContext([seq_len] * num_windows, model.spec)

    def embed(self, windows: list[list[int]]) -> Stream:
        ids = torch.tensor([t for w in windows for t in w], dtype=torch.long)
        return self.model.embed(ids).to(self.dtype), None  # [B*T, h]

    def subset(self, num_windows: int) -> "LayerRunner":
        """The first num_windows windows (AWQ searches on a sample)."""
        return LayerRunner(self.model, num_windows, self.seq_len, self.dtype)

    def cut(self, stream: Stream) -> Stream:
        """The rows of this runner's windows (the first ones) out of a longer stream."""
        n = self.num_windows * self.seq_len
        x, residual = stream
        return x[:n], None if residual is None else residual[:n]

    def run(self, index: int, layer: nn.Module, stream: Stream) -> Stream:
        """Decoder layer `index` (or a working copy of it) over the stream: its real forward."""
        cos, sin = self.tables[self.model.layer_ropes[index]]
        return layer(stream[0], stream[1], cos, sin, self.ctx)

    def final(self, stream: Stream) -> torch.Tensor:
        """The final norm over the last layer's stream: the model's hidden states."""
        x, residual = stream
        norm = self.model.model.norm
        return norm(x) if residual is None else norm.add_forward(x, residual)[0]


class Hooks:
    """Forward pre-hooks calling fn(name, input) on the named submodules while a forward runs."""

    def __init__(self, module: nn.Module, names, fn: Callable[[str, torch.Tensor], None], with_args: bool = False):
        self.handles = []
        for name in names:
            sub = module.get_submodule(name)
            if with_args:
                hook = (lambda n: lambda _m, args: fn(n, args))(name)
            else:
                hook = (lambda n: lambda _m, args: fn(n, args[0]))(name)
            self.handles.append(sub.register_forward_pre_hook(hook))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def discover_groups(layer: nn.Module, names: list[str], run: Callable[[], object]) -> list[list[str]]:
    """Run the forward once and group the linears that read the same input tensor, in the
    order data reaches them. Linears the forward never calls (an expert no token was routed
    to) are left out."""
    groups: list[list[str]] = []
    last = [None]

    def seen(name, x):
        if groups and x is last[0]:
            groups[-1].append(name)
        else:
            groups.append([name])
        last[0] = x

    with Hooks(layer, names, seen):
        run()
    last[0] = None
    return groups
