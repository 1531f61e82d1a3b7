"""The KV metadata of a GGUF file we write: general.*, the architecture's hyper-parameters
(the keys core/models/gguf_source.py reads back) and the tokenizer.

Keys and value types are the ones llama.cpp's convert_hf_to_gguf.py writes for LlamaModel and
Qwen2Model; llama.cpp checks value types strictly (a uint32 key written as int32 fails to
load), so every value here carries its GGUF type. A GGUF source keeps its own general.* and
tokenizer keys: a lossless copy, where transformers' rebuild of a GGUF tokenizer is not always
(it drops llama.cpp-only details such as SmolLM's digit-split pre-tokenizer).
Not here: the tensors (plan.py, writer.py).
"""

import math
from pathlib import Path

import gguf
import numpy as np

from ..models.spec import ModelSpec
from .plan import OutType
from .vocab import VocabMetadata, vocab_metadata

V = gguf.GGUFValueType
Value = gguf.gguf_writer.GGUFValue
QUANTIZATION_VERSION = 2  # ggml's GGML_QNT_VERSION: the block layouts we write
_SKIP_GENERAL = (
    "general.architecture",
    "general.file_type",
    "general.quantization_version",
    "general.alignment",
)


def model_metadata(spec: ModelSpec, arch: str, out: OutType) -> dict[str, Value]:
    """general.file_type and the {arch}.* hyper-parameters, in llama.cpp's order."""
    a = arch
    values = {
        f"{a}.block_count": _u32(spec.num_layers),
        f"{a}.context_length": _u32(spec.max_position_embeddings),
        f"{a}.embedding_length": _u32(spec.hidden_size),
        f"{a}.feed_forward_length": _u32(spec.intermediate_size),
        f"{a}.attention.head_count": _u32(spec.num_heads),
        f"{a}.attention.head_count_kv": _u32(spec.num_kv_heads),
        f"{a}.rope.freq_base": _f32(spec.rope.theta),
        f"{a}.attention.layer_norm_rms_epsilon": _f32(spec.rms_norm_eps),
        "general.file_type": _u32(int(out.file_type)),
        f"{a}.vocab_size": _u32(spec.vocab_size),
        f"{a}.rope.dimension_count": _u32(spec.head_dim),
    }
    if spec.head_dim != spec.hidden_size // spec.num_heads:
        # llama.cpp assumes hidden / heads; only a model that differs needs to say so
        values[f"{a}.attention.key_length"] = _u32(spec.head_dim)
        values[f"{a}.attention.value_length"] = _u32(spec.head_dim)
    if spec.rope.kind == "linear" and spec.rope.freq_factors is None:
        values[f"{a}.rope.scaling.type"] = Value("linear", V.STRING)
        values[f"{a}.rope.scaling.factor"] = _f32(spec.rope.factor)
    return values


def rope_freqs(spec: ModelSpec) -> np.ndarray | None:
    """The rope_freqs.weight tensor ([head_dim / 2] fp32 divisors of the base frequencies) by
    which llama.cpp applies Llama-3 rope scaling; None for models without it."""
    rope = spec.rope
    if rope.freq_factors is not None:
        return np.asarray(rope.freq_factors, dtype=np.float32)
    if rope.kind != "llama3":
        return None
    dim = spec.head_dim
    freqs = 1.0 / (rope.theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    low_wavelen = rope.original_max_position / rope.low_freq_factor
    high_wavelen = rope.original_max_position / rope.high_freq_factor
    factors = []
    for freq in freqs:  # llama.cpp's LlamaModel.generate_extra_tensors, term for term
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(rope.factor)
        else:
            smooth = (rope.original_max_position / wavelen - rope.low_freq_factor) / (
                rope.high_freq_factor - rope.low_freq_factor
            )
            factors.append(1 / ((1 - smooth) / rope.factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def general_from_gguf(fields: dict) -> dict[str, Value]:
    """A GGUF source's general.* (name, organization, license, ...), less what we rewrite."""
    values = {"general.type": Value("model", V.STRING)}
    for key, value in fields.items():
        if key.startswith("general.") and key not in _SKIP_GENERAL:
            typed = _typed(key, value)
            if typed is not None:
                values[key] = typed
    return values


def general_from_hf(model_dir: Path, name: str | None, num_params: int) -> dict[str, Value]:
    """general.* from an HF directory's README model card and config, by gguf-py's Metadata
    heuristics: what llama.cpp's converter writes."""
    meta = gguf.Metadata.load(None, model_dir, name, num_params)
    if meta.name is None:
        meta.name = name or model_dir.name
    if meta.size_label is None and num_params > 0:
        meta.size_label = gguf.size_label(num_params, 0, 0, 0)
    scratch = gguf.GGUFWriter(path=None, arch="scratch")  # only to collect the KV pairs
    scratch.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(scratch)
    return {k: v for k, v in scratch.kv_data[0].items() if k not in _SKIP_GENERAL}


def tokenizer_from_gguf(fields: dict) -> VocabMetadata:
    """Copy a GGUF source's tokenizer.* keys with their GGUF types."""
    values = {}
    for key, value in fields.items():
        if key.startswith("tokenizer."):
            typed = _typed(key, value)
            if typed is not None:
                values[key] = typed
    pre = str(fields.get("tokenizer.ggml.pre", "default"))
    return VocabMetadata(values, pre, "copied from the source GGUF")


def tokenizer_from_hf(tokenizer, spec: ModelSpec, model_dir: Path | None) -> VocabMetadata:
    config_ids = {"bos": spec.bos_token_id, "eos": spec.eos_token_ids[0] if spec.eos_token_ids else None}
    return vocab_metadata(tokenizer, spec.vocab_size, model_dir, config_ids)


def closing_metadata() -> dict[str, Value]:
    return {"general.quantization_version": _u32(QUANTIZATION_VERSION)}


def _typed(key: str, value) -> Value | None:
    """A value read by core.gguf.reader (plain Python) with the GGUF type llama.cpp expects."""
    if isinstance(value, bool):
        return Value(value, V.BOOL)
    if isinstance(value, str):
        return Value(value, V.STRING)
    if isinstance(value, int):
        return _u32(value) if 0 <= value < 2**32 else Value(value, V.INT64)
    if isinstance(value, float):
        return _f32(value)
    if isinstance(value, list) and value:
        if key.endswith(".scores"):
            return Value([float(v) for v in value], V.ARRAY, V.FLOAT32)
        if key.endswith(".token_type"):
            return Value([int(v) for v in value], V.ARRAY, V.INT32)
        if key.endswith(".precompiled_charsmap"):
            return Value([int(v) for v in value], V.ARRAY, V.UINT8)
        if all(isinstance(v, str) for v in value):
            return Value(value, V.ARRAY, V.STRING)
    return None  # nested or empty arrays: nothing llama.cpp needs from a llama/qwen2 file


def _u32(v: int) -> Value:
    return Value(int(v), V.UINT32)


def _f32(v: float) -> Value:
    return Value(float(v), V.FLOAT32)
