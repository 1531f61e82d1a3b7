"""inspect_model: what a model is, read from headers only (no weights are loaded)."""

import json
import math
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ..runtime import dtype_name, resolve_dtype
from . import checkpoint, counts
from .gguf_source import GGUFSource, hf_tensor_name
from .resolve import ModelSource, SourceFormat, resolve_model
from .spec import ModelSpec, spec_from_hf_config


@dataclass(frozen=True)
class TensorInfo:
    name: str  # as stored in the file
    shape: tuple[int, ...]  # torch order
    type: str  # "F32", "Q4_1", "BF16", ...


@dataclass(frozen=True)
class ModelInfo:
    reference: str
    path: str
    format: str  # "gguf" | "hf-dir"
    origin: str  # "alias" | "path" | "hub"
    name: str
    architecture: str  # HF architecture name
    num_params: int  # counted from the stored tensors (tied embeddings once)
    counted_params: (
        int  # counted from the spec (core/models/counts.py): equals num_params for a full checkpoint
    )
    active_params: int  # what one token reads: top_k experts of an MoE
    num_experts: int  # 1 for a dense model
    experts_per_token: int
    flops_per_token: (
        int  # forward, short context: 2 x active matmul weights (attention's part grows with context)
    )
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int
    tie_word_embeddings: bool
    rope: str
    has_chat_template: bool
    file_bytes: int
    runtime_dtype: str  # what `auto` picks on this machine
    kv_bytes_per_token: dict[str, int]  # by KV dtype, every layer holding every token
    # by KV dtype, averaged over a context_length-long sequence: sliding-window layers hold only W tokens
    kv_bytes_per_token_at_context: dict[str, int]
    tensor_types: dict[str, int]  # type -> number of tensors
    tensors: list[TensorInfo]
    quantization: str | None = None  # "gptq 4-bit, group 64, sym" from quantization_config

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


_KV_DTYPES = (("fp32", 4), ("bf16", 2), ("fp8", 1))


def inspect_model(reference: str | ModelSource) -> ModelInfo:
    source = resolve_model(reference) if isinstance(reference, str) else reference
    quantization, bits = None, 4
    if source.format is SourceFormat.GGUF:
        spec, tensors, chat, size = _inspect_gguf(source.path)
    else:
        spec, tensors, chat, size = _inspect_dir(source.path)
        config = checkpoint.read_config(source.path)
        quantization = _describe_quantization(config)
        bits = int((config.get("quantization_config") or {}).get("bits", 4))
    runtime = resolve_dtype("auto")
    return ModelInfo(
        reference=source.reference,
        path=str(source.path),
        format=source.format.value,
        origin=source.origin,
        name=spec.name,
        architecture=spec.hf_architecture,
        num_params=sum(_num_params(t, bits) for t in tensors if _is_weight(t.name)),
        counted_params=counts.count_params(spec),
        active_params=counts.active_params(spec),
        num_experts=counts.num_experts(spec),
        experts_per_token=counts.experts_per_token(spec),
        flops_per_token=round(counts.flops_per_token(spec)),
        **spec.dims(),
        context_length=spec.max_position_embeddings,
        rope=_describe_rope(spec),
        has_chat_template=chat,
        file_bytes=size,
        runtime_dtype=dtype_name(runtime),
        kv_bytes_per_token={name: round(counts.kv_bytes_per_token(spec, n)) for name, n in _KV_DTYPES},
        kv_bytes_per_token_at_context={
            name: math.ceil(counts.kv_bytes_per_token(spec, n, spec.max_position_embeddings))
            for name, n in _KV_DTYPES
        },
        tensor_types=dict(Counter(t.type for t in tensors).most_common()),
        tensors=tensors,
        quantization=quantization,
    )


def _num_params(t: TensorInfo, bits: int) -> int:
    """Weights a tensor stands for: packed int32 GPTQ/AWQ words hold several each; their
    zeros, scales and g_idx are overhead, not parameters."""
    name = t.name.rsplit(".", 1)[-1]
    if name in ("qzeros", "scales", "g_idx"):
        return 0
    if name == "qweight":
        return math.prod(t.shape) * (32 // bits)
    return math.prod(t.shape)


def _describe_quantization(config: dict) -> str | None:
    q = config.get("quantization_config")
    if not q:
        return None
    method = str(q.get("quant_method", "?"))
    group = q.get("group_size", -1)
    parts = [f"{method} {q.get('bits', '?')}-bit", "per channel" if group == -1 else f"group {group}"]
    if "sym" in q:
        parts.append("sym" if q["sym"] else "asym")
    if "zero_point" in q:
        parts.append("zero point" if q["zero_point"] else "sym")
    if q.get("desc_act"):
        parts.append("act-order")
    return ", ".join(parts)


def _is_weight(name: str) -> bool:
    return hf_tensor_name(name) is not None or name.startswith(("model.", "lm_head."))


def _inspect_gguf(path: Path) -> tuple[ModelSpec, list[TensorInfo], bool, int]:
    gguf = GGUFSource(path)
    tensors = [TensorInfo(t.name, t.shape, t.type_name) for t in gguf.tensors]
    return gguf.spec(), tensors, gguf.field("tokenizer.chat_template") is not None, path.stat().st_size


def _inspect_dir(path: Path) -> tuple[ModelSpec, list[TensorInfo], bool, int]:
    spec = spec_from_hf_config(checkpoint.read_config(path))
    index = checkpoint.tensor_index(path)
    tensors = [TensorInfo(name, shape, dtype) for name, (_, dtype, shape) in sorted(index.items())]
    chat = (path / "chat_template.jinja").is_file() or "chat_template" in _json(
        path / "tokenizer_config.json"
    )
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return spec, tensors, chat, size


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _describe_rope(spec: ModelSpec) -> str:
    r = spec.rope
    if r.freq_factors is not None:
        return f"theta {r.theta:g}, llama3 (frequency factors)"
    if r.kind == "default":
        return f"theta {r.theta:g}"
    return f"theta {r.theta:g}, {r.kind} x{r.factor:g}"
