"""Quantized checkpoints (GPTQ v1/v2, AWQ GEMM) into our model: each quantized linear's
packed tensors become a kernels.QuantLinear in place of its nn.Linear.

The formats themselves (bit layouts) live in core/quant/formats.py; this module only reads
`quantization_config`, routes the tensors, and builds the modules.
"""

from dataclasses import dataclass

import torch

from ...kernels.quant_linear import QuantLinear
from ..errors import ModelError

_PARTS = {"gptq": ("qweight", "qzeros", "scales", "g_idx"), "awq": ("qweight", "qzeros", "scales")}


@dataclass(frozen=True)
class QuantScheme:
    method: str  # gptq | awq
    bits: int
    group_size: int  # -1: per output channel
    zeros_minus_one: bool  # GPTQ v1 stores zero - 1 (v2 and AWQ store the zero itself)

    @classmethod
    def from_config(cls, config: dict) -> "QuantScheme | None":
        q = config.get("quantization_config")
        if not q:
            return None
        method = str(q.get("quant_method", "")).lower()
        if method not in _PARTS:
            raise ModelError(f"unsupported quantization '{method}': llmtool loads GPTQ and AWQ (GEMM) checkpoints")
        bits, group = int(q.get("bits", 4)), int(q.get("group_size", 128))
        if method == "awq":
            version = str(q.get("version", "gemm")).lower()
            if version != "gemm" or bits != 4:
                raise ModelError(f"unsupported AWQ checkpoint ({bits}-bit, version {version}): only 4-bit GEMM")
            return cls("awq", bits, group, False)
        if bits not in (4, 8):
            raise ModelError(f"unsupported GPTQ checkpoint: {bits}-bit (llmtool runs 4- and 8-bit)")
        fmt = str(q.get("checkpoint_format", "gptq")).lower()
        return cls("gptq", bits, group, fmt != "gptq_v2")

    def split(self, name: str) -> tuple[str, str] | None:
        """'model.layers.0.mlp.up_proj.qweight' -> ('model.layers.0.mlp.up_proj', 'qweight')."""
        module, _, part = name.rpartition(".")
        return (module, part) if part in _PARTS[self.method] else None

    def build(self, module: str, tensors: dict[str, torch.Tensor], bias, dtype, device) -> QuantLinear:
        from ..quant import formats  # core.quant imports the model loader: import here, not at the top

        missing = [p for p in _PARTS[self.method] if p not in tensors]
        if missing:
            raise ModelError(f"quantized layer {module} lacks {', '.join(missing)}")
        if self.method == "awq":
            q, zeros, scales = formats.unpack_awq(tensors, bits=self.bits)
            in_features = q.shape[1]
            group = in_features if self.group_size == -1 else self.group_size
            g_idx = torch.arange(in_features, dtype=torch.int32) // group
        else:
            q, zeros, scales, g_idx = formats.unpack_gptq(tensors, bits=self.bits)
            if not self.zeros_minus_one:
                zeros = zeros - 1  # unpack_gptq added v1's 1 back; v2 never subtracted it
        try:
            return QuantLinear(q, zeros, scales, g_idx, self.bits, bias=bias, dtype=dtype).to(device)
        except ValueError as e:
            raise ModelError(f"quantized layer {module}: {e}") from None


def install(model: torch.nn.Module, scheme: QuantScheme, packed: dict[str, dict], state: dict, dtype, device) -> set[str]:
    """Replace each packed module; takes its bias out of `state`. Returns the state names it covers."""
    covered = set()
    for module, tensors in packed.items():
        bias = state.pop(f"{module}.bias", None)
        try:
            model.get_submodule(module)
        except AttributeError:
            raise ModelError(f"checkpoint has quantized tensors for {module}, which the model does not have") from None
        model.set_submodule(module, scheme.build(module, tensors, bias, dtype, device))
        covered |= {f"{module}.weight", f"{module}.bias"}
    return covered
