"""The dense gated MLP: down(act(gate(x)) * up(x)), act SiLU (SwiGLU) or GELU-tanh (GeGLU).

Phi-3 checkpoints store gate and up as one gate_up_proj: then the module is built fused.
"""

from torch import nn

from ....kernels.activation import gelu_tanh_and_mul, silu_and_mul
from ..spec import ModelSpec
from .linear import fuse_linears

GATED_ACTIVATIONS = {"silu": silu_and_mul, "gelu_tanh": gelu_tanh_and_mul}


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec, fused_gate_up: bool = False, intermediate_size: int | None = None,
                 names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")):  # fmt: skip
        super().__init__()
        h, i = spec.hidden_size, intermediate_size or spec.intermediate_size
        self.names = names
        self.gate_up_proj: nn.Module | None = None  # set by fuse() unless stored fused
        if fused_gate_up:
            self.gate_up_proj = nn.Linear(h, 2 * i, bias=spec.mlp_bias)
        else:
            setattr(self, names[0], nn.Linear(h, i, bias=spec.mlp_bias))
            setattr(self, names[1], nn.Linear(h, i, bias=spec.mlp_bias))
        setattr(self, names[2], nn.Linear(i, h, bias=spec.mlp_bias))
        self.intermediate_size = i
        self.act_and_mul = GATED_ACTIVATIONS[spec.activation]

    @property
    def down(self) -> nn.Module:
        return getattr(self, self.names[2])

    def fuse(self) -> None:
        """gate and up as one product; drops the two originals."""
        gate, up, down = self.names
        if self.gate_up_proj is None:
            self.gate_up_proj = fuse_linears((getattr(self, gate), getattr(self, up)))
            delattr(self, gate)
            delattr(self, up)
        else:
            self.gate_up_proj = fuse_linears((self.gate_up_proj,))
        setattr(self, down, fuse_linears((getattr(self, down),)))

    def forward(self, x):
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        else:
            gate, up = getattr(self, self.names[0])(x), getattr(self, self.names[1])(x)
        return self.down(self.act_and_mul(gate, up))
