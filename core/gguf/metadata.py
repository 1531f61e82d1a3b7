"""The KV metadata of a GGUF file we write: general.*, the architecture's hyper-parameters
(the keys core/models/gguf_source.py reads back) and the tokenizer.

Keys are gguf-py's (gguf.Keys) and the ones llama.cpp's convert_hf_to_gguf.py writes for each
family, chosen from what the ModelSpec holds (experts, soft-caps, windows, multipliers); llama.cpp checks value types strictly (a uint32 key written as int32 fails to
load), so every value here carries its GGUF type. A GGUF source keeps its own general.* and
tokenizer keys: a lossless copy, where transformers' rebuild of a GGUF tokenizer is not always
(it drops llama.cpp-only details such as SmolLM's digit-split pre-tokenizer).
Not here: the tensors (plan.py, writer.py).
"""

import math
from pathlib import Path

import gguf
import numpy as np

from ..models.spec import SLIDING, ModelSpec
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
    K = gguf.Keys

    def key(k: str) -> str:
        return k.format(arch=arch)

    rope = spec.rope
    values = {
        key(K.LLM.BLOCK_COUNT): _u32(spec.num_layers),
        key(K.LLM.CONTEXT_LENGTH): _u32(spec.max_position_embeddings),
        key(K.LLM.EMBEDDING_LENGTH): _u32(spec.hidden_size),
        key(K.LLM.FEED_FORWARD_LENGTH): _u32(spec.intermediate_size),
        key(K.Attention.HEAD_COUNT): _u32(spec.num_heads),
        key(K.Attention.HEAD_COUNT_KV): _u32(spec.num_kv_heads),
        key(K.Rope.FREQ_BASE): _f32(rope.theta),
        key(K.Attention.LAYERNORM_RMS_EPS): _f32(spec.rms_norm_eps),
        "general.file_type": _u32(int(out.file_type)),
        key(K.LLM.VOCAB_SIZE): _u32(spec.vocab_size),
        key(K.Rope.DIMENSION_COUNT): _u32(int(spec.head_dim * rope.partial_rotary_factor)),
    }
    if spec.head_dim != spec.hidden_size // spec.num_heads:
        # llama.cpp assumes hidden / heads; only a model that differs needs to say so
        values[key(K.Attention.KEY_LENGTH)] = _u32(spec.head_dim)
        values[key(K.Attention.VALUE_LENGTH)] = _u32(spec.head_dim)
    if rope.kind == "linear" and rope.freq_factors is None:
        values[key(K.Rope.SCALING_TYPE)] = Value("linear", V.STRING)
        values[key(K.Rope.SCALING_FACTOR)] = _f32(rope.factor)
    if rope.kind == "longrope":  # the factors are tensors (rope_factors_long/short)
        values[key(K.Rope.SCALING_ORIG_CTX_LEN)] = _u32(rope.original_max_position)
        values[key(K.Rope.SCALING_ATTN_FACTOR)] = _f32(rope.attention_factor)
    if spec.moe is not None:
        values[key(K.LLM.EXPERT_COUNT)] = _u32(spec.moe.num_experts)
        values[key(K.LLM.EXPERT_USED_COUNT)] = _u32(spec.moe.top_k)
        values[key(K.LLM.EXPERT_FEED_FORWARD_LENGTH)] = _u32(spec.moe.intermediate_size)
        values[key(K.LLM.EXPERT_WEIGHTS_NORM)] = Value(spec.moe.renormalize, V.BOOL)
    if spec.attn_softcap:
        values[key(K.LLM.ATTN_LOGIT_SOFTCAPPING)] = _f32(spec.attn_softcap)
    if spec.final_softcap:
        values[key(K.LLM.FINAL_LOGIT_SOFTCAPPING)] = _f32(spec.final_softcap)
    if spec.sliding_window:
        values[key(K.Attention.SLIDING_WINDOW)] = _u32(spec.sliding_window)
        if spec.layer_types:  # which layers slide: a per-layer bool array, as llama.cpp reads it
            flags = [t == SLIDING for t in spec.layer_types]
            values[key(K.Attention.SLIDING_WINDOW_PATTERN)] = Value(flags, V.ARRAY, V.BOOL)
        if spec.local_rope is not None:
            values[key(K.Rope.FREQ_BASE_SWA)] = _f32(spec.local_rope.theta)
    if arch == gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GRANITE]:  # llama.cpp's Granite multipliers
        values[key(K.LLM.EMBEDDING_SCALE)] = _f32(spec.embed_scale)
        values[key(K.LLM.RESIDUAL_SCALE)] = _f32(spec.residual_scale)
        values[key(K.Attention.SCALE)] = _f32(spec.attn_scale if spec.attn_scale is not None else spec.head_dim**-0.5)
        values[key(K.LLM.LOGIT_SCALE)] = _f32(1.0 / spec.logit_scale)  # llama.cpp divides by it
    return values


def computed_tensor(spec: ModelSpec, name: str) -> np.ndarray:
    """The tensors a GGUF file holds that are not weights: rope_freqs (Llama-3 scaling),
    rope_factors_long/short (LongRoPE)."""
    T = gguf.MODEL_TENSOR
    stem = name.removesuffix(".weight")
    if stem == gguf.TENSOR_NAMES[T.ROPE_FREQS]:
        return rope_freqs(spec)
    if stem == gguf.TENSOR_NAMES[T.ROPE_FACTORS_LONG]:
        return np.asarray(spec.rope.long_factor, dtype=np.float32)
    if stem == gguf.TENSOR_NAMES[T.ROPE_FACTORS_SHORT]:
        return np.asarray(spec.rope.short_factor, dtype=np.float32)
    raise ValueError(f"no computed tensor {name}")


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
