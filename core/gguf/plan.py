"""The per-tensor plan of a GGUF conversion: GGUF name, shape and ggml type of every tensor.

The type rules are llama.cpp's (src/llama-quant.cpp, llama_tensor_get_type): 1-D tensors,
norms and biases stay F32; output.weight (and token_embd.weight when the embeddings are tied,
as llama.cpp quantizes the shared tensor like the output) goes to Q6_K, or Q8_0 when its rows
do not split into the default type's blocks; the _M/_S mixes promote attn_v, ffn_down and
attn_output by layer index; a row length the chosen block size does not divide falls back to
a 32-wide type (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0), then to F16.
q2_k is llama.cpp's Q2_K, itself a mix (attn_v, attn_output and ffn_down in Q3_K or Q4_K);
q3_k, q4_k and q5_k, which llama.cpp has no file type for, are "pure": the default type
everywhere but the output rule and the fallbacks (q3_k and q5_k equal llama.cpp's Q3_K_S and
Q5_K_S, which promote nothing). Not here: writing (writer.py), the IQ types, imatrix rules.
Everything is decided from the ModelSpec alone, so a dry run needs no weights.
"""

from dataclasses import dataclass

import gguf

from ..errors import ModelError, UsageError
from ..models.spec import ModelSpec
from .layout import arch_name, layout

Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType



@dataclass(frozen=True)
class OutType:
    name: str  # what the user types: "q4_k_m"
    default: Q  # the ggml type of most 2-D weights
    file_type: FT  # general.file_type, llama.cpp's LLAMA_FTYPE_*
    mix: bool = False  # llama.cpp's per-layer promotions (the _S / _M mixes)


OUT_TYPES = {
    t.name: t
    for t in (
        OutType("f32", Q.F32, FT.ALL_F32),
        OutType("f16", Q.F16, FT.MOSTLY_F16),
        OutType("bf16", Q.BF16, FT.MOSTLY_BF16),
        OutType("q8_0", Q.Q8_0, FT.MOSTLY_Q8_0),
        OutType("q4_0", Q.Q4_0, FT.MOSTLY_Q4_0),
        OutType("q4_1", Q.Q4_1, FT.MOSTLY_Q4_1),
        OutType("q5_0", Q.Q5_0, FT.MOSTLY_Q5_0),
        OutType("q5_1", Q.Q5_1, FT.MOSTLY_Q5_1),
        OutType("q2_k", Q.Q2_K, FT.MOSTLY_Q2_K, mix=True),
        OutType("q3_k", Q.Q3_K, FT.MOSTLY_Q3_K_S),
        OutType("q4_k", Q.Q4_K, FT.MOSTLY_Q4_K_S),
        OutType("q5_k", Q.Q5_K, FT.MOSTLY_Q5_K_S),
        OutType("q6_k", Q.Q6_K, FT.MOSTLY_Q6_K),
        OutType("q3_k_m", Q.Q3_K, FT.MOSTLY_Q3_K_M, mix=True),
        OutType("q4_k_s", Q.Q4_K, FT.MOSTLY_Q4_K_S, mix=True),
        OutType("q4_k_m", Q.Q4_K, FT.MOSTLY_Q4_K_M, mix=True),
        OutType("q5_k_m", Q.Q5_K, FT.MOSTLY_Q5_K_M, mix=True),
    )
}
_UNQUANTIZED = (Q.F32, Q.F16, Q.BF16)
# llama.cpp's tensor_type_fallback: the 32-wide type to use when 256 does not divide a row
_FALLBACK = {Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0, Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}


@dataclass(frozen=True)
class TensorPlan:
    name: str  # GGUF name: blk.3.attn_q.weight
    hf_name: str | None  # where the data comes from (None: computed, e.g. rope_freqs, or stacked)
    shape: tuple[int, ...]  # torch order, rows first
    ggml_type: str  # "Q4_K"
    nbytes: int
    note: str = ""  # why it is not the default type: "output rule", "fallback ...", "promoted ..."
    fallback_from: str | None = None  # the type wanted before the row length forced another
    sources: tuple[str, ...] = ()  # every HF tensor it is made of (MoE experts: one per expert)


@dataclass(frozen=True)
class ConversionPlan:
    out_type: OutType
    architecture: str  # GGUF architecture
    tensors: tuple[TensorPlan, ...]

    @property
    def data_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def type_counts(self) -> dict[str, tuple[int, int]]:
        """ggml type -> (tensors, bytes), largest share first."""
        counts: dict[str, list[int]] = {}
        for t in self.tensors:
            c = counts.setdefault(t.ggml_type, [0, 0])
            c[0] += 1
            c[1] += t.nbytes
        return {k: (v[0], v[1]) for k, v in sorted(counts.items(), key=lambda kv: -kv[1][1])}


def parse_out_type(name: str) -> OutType:
    out = OUT_TYPES.get(name.lower())
    if out is None:
        raise UsageError(f"unknown type '{name}': valid types are {', '.join(OUT_TYPES)}")
    return out


def gguf_architecture(spec: ModelSpec) -> str:
    """The GGUF (llama.cpp) architecture name of the spec's family: gguf-py's MODEL_ARCH_NAMES."""
    return arch_name(spec)


def spec_tensors(spec: ModelSpec) -> list[tuple[str, tuple[str, ...], tuple[int, ...]]]:
    """(GGUF name, HF sources, shape) of every tensor the file holds, in writing order."""
    return [(t.name, t.sources, t.shape) for t in layout(spec)]


def plan_conversion(spec: ModelSpec, out: OutType) -> ConversionPlan:
    arch = gguf_architecture(spec)
    tensors = []
    for name, sources, shape in spec_tensors(spec):
        qtype, note, wanted = tensor_type(name, shape, out, spec)
        fallback_from = wanted.name if wanted != qtype else None
        hf_name = sources[0] if len(sources) == 1 else None
        nbytes = _nbytes(shape, qtype)
        tensors.append(TensorPlan(name, hf_name, shape, qtype.name, nbytes, note, fallback_from, sources))
    return ConversionPlan(out, arch, tuple(tensors))


def tensor_type(name: str, shape: tuple[int, ...], out: OutType, spec: ModelSpec) -> tuple[Q, str, Q]:
    """(ggml type, why it differs from out.default, the type wanted before any fallback)."""
    if len(shape) < 2 or not name.endswith(".weight") or name.endswith(("_norm.weight", "ffn_gate_inp.weight")):
        return Q.F32, "", Q.F32  # llama.cpp never quantizes 1-D tensors, norms, biases or MoE routers
    if out.default in _UNQUANTIZED:
        return out.default, "", out.default
    cols = shape[-1]  # ggml's ne[0]: the row length the blocks run along
    new, note = out.default, ""
    is_output = name == "output.weight" or (name == "token_embd.weight" and spec.tie_word_embeddings)
    if is_output:
        if cols % _block(out.default):
            new, note = Q.Q8_0, "output rule (row not divisible by the block)"
        elif new != Q.Q8_0:
            new, note = Q.Q6_K, "output rule"
    elif out.mix and name.startswith("blk."):
        new, note = _mix_type(name, out, spec)
    wanted = new
    if cols % _block(new):
        new = _FALLBACK.get(new, Q.F16)
        if cols % _block(new):
            new = Q.F16
        why = f"fallback {wanted.name} -> {new.name}: row {cols} not divisible by {_block(wanted)}"
        note = f"{note}; {why}" if note else why
    return new, note, wanted


def _mix_type(name: str, out: OutType, spec: ModelSpec) -> tuple[Q, str]:
    # llama.cpp counts these tensors in file order, which its loader sorts by layer: the
    # counter is the layer index.
    i, n = int(name.split(".")[1]), spec.num_layers
    kind = name.split(".")[2].removesuffix("_exps")  # llama.cpp matches ffn_down in ffn_down_exps too
    m = out.name
    if kind == "attn_qkv":  # fused q/k/v (Phi-3)
        new = {"q3_k_m": Q.Q4_K, "q4_k_m": Q.Q5_K, "q5_k_m": Q.Q6_K}.get(m, out.default)
        return new, _promoted(new, out)
    if kind == "attn_v":
        new = out.default
        if m == "q2_k":
            new = Q.Q4_K if spec.num_heads // spec.num_kv_heads >= 4 else Q.Q3_K
        elif m == "q3_k_m":
            new = Q.Q5_K if i < 2 else Q.Q4_K
        elif m in ("q4_k_m", "q5_k_m") and _use_more_bits(i, n):
            new = Q.Q6_K
        elif m == "q4_k_s" and i < 4:
            new = Q.Q5_K
        # llama.cpp's LLM_TYPE_70B (80 layers, GQA): attn_v is 8x smaller than attn_q there
        if n == 80 and spec.num_kv_heads != spec.num_heads and new in (Q.Q3_K, Q.Q4_K):
            new = Q.Q5_K
        return new, _promoted(new, out)
    if kind == "ffn_down":
        new = out.default
        if m == "q2_k":
            new = Q.Q3_K
        elif m == "q3_k_m":
            new = Q.Q5_K if i < n // 16 else Q.Q4_K
        elif m in ("q4_k_m", "q5_k_m") and _use_more_bits(i, n):
            new = Q.Q6_K
        elif m == "q4_k_s" and i < n // 8:
            new = Q.Q5_K
        return new, _promoted(new, out)
    if kind == "attn_output" and m in ("q2_k", "q3_k_m"):
        new = Q.Q3_K if m == "q2_k" else Q.Q4_K
        return new, _promoted(new, out)
    return out.default, ""


def _use_more_bits(i: int, n: int) -> bool:
    # the first and last eighth of the layers, and every third one between
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _promoted(new: Q, out: OutType) -> str:
    return "" if new == out.default else f"promoted by the {out.name} mix"


def _block(qtype: Q) -> int:
    return gguf.GGML_QUANT_SIZES[qtype][0]


def block_size(type_name: str) -> int:
    """Weights per block of a ggml type named like "Q4_K"."""
    return _block(Q[type_name])


def _nbytes(shape: tuple[int, ...], qtype: Q) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    count = 1
    for d in shape:
        count *= d
    return count // block * size
