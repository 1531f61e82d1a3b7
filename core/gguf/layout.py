"""Which tensors a GGUF file of a model holds, under llama.cpp's names: derived from gguf-py's
own tables (MODEL_ARCH, TensorNameMap, TENSOR_NAMES), not hand-written ones, for every family.

The HF names come from the model itself (CausalLM built on the meta device: its parameter
names are the checkpoint's); gguf-py's TensorNameMap for the family's architecture turns each
into llama.cpp's name. What the name map does not cover is llama.cpp's layout, done here for
every family alike: experts stacked into one [E, rows, cols] tensor per projection
(ffn_gate_exps/ffn_up_exps/ffn_down_exps), computed rope tensors (rope_freqs for Llama-3
scaling, rope_factors_long/short for LongRoPE), q/k rows interleaved for the architectures
llama.cpp rotates that way (family.gguf_permute_qk), and norms that scale by (offset + w)
(Gemma) stored as offset + w, as llama.cpp's converter does for every *norm.weight.
The writer applies to_gguf, the reader from_gguf: one table, both directions.
"""

import re
from dataclasses import dataclass

import gguf
import torch

from ..errors import ModelError
from ..models.registry import family
from ..models.spec import ModelSpec

T = gguf.MODEL_TENSOR
_EXPERT = re.compile(r"model\.layers\.(\d+)\.(.+)\.experts\.(\d+)\.(\w+)\.weight")


@dataclass(frozen=True)
class GGUFTensorSpec:
    name: str  # llama.cpp's: blk.3.attn_q.weight
    sources: tuple[str, ...]  # HF names it is made of (several: stacked experts; none: computed)
    shape: tuple[int, ...]  # torch order


def model_arch(spec: ModelSpec) -> gguf.MODEL_ARCH:
    arch = getattr(family(spec.family), "gguf_arch", None)
    if arch is None:
        raise ModelError(f"the {spec.family} family has no GGUF architecture")
    return gguf.MODEL_ARCH[arch]


def arch_name(spec: ModelSpec) -> str:
    return gguf.MODEL_ARCH_NAMES[model_arch(spec)]


def hf_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """HF name -> shape of every weight the model loads (a tied lm_head left out)."""
    from ..models.causal_lm import CausalLM

    with torch.device("meta"):
        model = CausalLM(spec)
    shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    if spec.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    return shapes


def layout(spec: ModelSpec) -> list[GGUFTensorSpec]:
    """Every tensor of the file, in writing order (computed rope tensors first, as llama.cpp)."""
    arch = model_arch(spec)
    names = gguf.get_tensor_name_map(arch, spec.num_layers)
    fam = family(spec.family)
    expert_kinds = dict(zip(fam.expert_names, (T.FFN_GATE_EXP, T.FFN_UP_EXP, T.FFN_DOWN_EXP)))
    out: list[GGUFTensorSpec] = []
    rope = spec.rope
    if rope.freq_factors is not None or rope.kind == "llama3":
        out.append(GGUFTensorSpec(gguf.TENSOR_NAMES[T.ROPE_FREQS] + ".weight", (), (spec.head_dim // 2,)))
    if rope.kind == "longrope":
        n = len(rope.long_factor or ())
        for kind in (T.ROPE_FACTORS_LONG, T.ROPE_FACTORS_SHORT):
            out.append(GGUFTensorSpec(gguf.TENSOR_NAMES[kind] + ".weight", (), (n,)))
    stacks: dict[str, list] = {}
    for hf, shape in hf_shapes(spec).items():
        m = _EXPERT.fullmatch(hf)
        if m and m.group(4) in expert_kinds:
            layer = int(m.group(1))
            name = gguf.TENSOR_NAMES[expert_kinds[m.group(4)]].format(bid=layer) + ".weight"
            if name not in stacks:
                stacks[name] = [len(out), [], shape]
                out.append(None)  # placeholder: filled once every expert is seen
            stacks[name][1].append(hf)
            continue
        name = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ModelError(f"no GGUF name for {hf} in llama.cpp's {gguf.MODEL_ARCH_NAMES[arch]} layout")
        out.append(GGUFTensorSpec(name, (hf,), shape))
    for name, (index, sources, shape) in stacks.items():
        out[index] = GGUFTensorSpec(name, tuple(sources), (len(sources), *shape))
    return out


def _is_norm(hf: str) -> bool:
    return hf.endswith("norm.weight")


def _permute_heads(spec: ModelSpec, hf: str) -> int | None:
    if not family(spec.family).gguf_permute_qk:
        return None
    if ".q_proj." in hf:
        return spec.num_heads
    if ".k_proj." in hf:
        return spec.num_kv_heads
    return None


def to_gguf(spec: ModelSpec, hf: str, tensor: torch.Tensor) -> torch.Tensor:
    """One HF tensor (fp32) -> its GGUF content."""
    heads = _permute_heads(spec, hf)
    if heads is not None:
        tensor = permute_rows(tensor, heads)
    if spec.norm_offset and _is_norm(hf):
        tensor = tensor + spec.norm_offset
    return tensor


def from_gguf(spec: ModelSpec, hf: str, tensor: torch.Tensor) -> torch.Tensor:
    """The inverse of to_gguf."""
    heads = _permute_heads(spec, hf)
    if heads is not None:
        tensor = unpermute_rows(tensor, heads)
    if spec.norm_offset and _is_norm(hf):
        tensor = tensor - spec.norm_offset
    return tensor


def unpermute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of llama.cpp's convert-time permute (interleaved -> rotate-half row order)."""
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_head, rows // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def permute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's convert-time permute (rotate-half -> interleaved row order)."""
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)
