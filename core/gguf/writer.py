"""convert_to_gguf: any model we load -> one GGUF file that llama.cpp (and our reader) loads.

The plan (plan.py) fixes every tensor's name, shape and type from the ModelSpec, so the
header is written first and the tensors stream after it, one at a time: a model never sits
in memory twice, quantized. GPTQ/AWQ checkpoints are dequantized to float first (GGUF has no
GPTQ blocks). Names and per-tensor transforms (q/k rows interleaved for llama.cpp's rotary on
the architectures that need it, experts stacked, Gemma's norms stored as 1 + w) are
layout.py's, shared with the reader. The file is written beside the target under a
temporary name and renamed at the end: a failure leaves nothing behind.
Block quantizers: gguf-py for F16/BF16/Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, kernels.ggml_kquants for K.
"""

import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from ..errors import ModelError, UsageError
from ..models.gguf_source import GGUFSource
from ..models.loader import LoadedModel, load_model, load_spec
from ..models.resolve import ModelSource, SourceFormat, resolve_model
from ..models.spec import ModelSpec
from ..progress import ProgressFn, no_progress
from . import metadata as meta
from .layout import to_gguf
from .plan import ConversionPlan, parse_out_type, plan_conversion
from .vocab import VocabMetadata

Q = gguf.GGMLQuantizationType
_K_TYPES = (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)
_READ_AHEAD = 2  # tensors quantized ahead of the writer (numpy releases the GIL: 2 cores busy)


@dataclass(frozen=True)
class ConversionResult:
    path: Path | None  # None for a dry run without -o
    plan: ConversionPlan
    file_bytes: int  # the whole file: header, metadata, tensor infos, aligned data
    tokenizer_pre: str
    pre_source: str  # how tokenizer.ggml.pre was chosen
    seconds: float
    dry_run: bool
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        plan = self.plan
        return {
            "output": str(self.path) if self.path else None,
            "type": plan.out_type.name,
            "file_type": plan.out_type.file_type.name,
            "architecture": plan.architecture,
            "dry_run": self.dry_run,
            "file_bytes": self.file_bytes,
            "tensor_bytes": plan.data_bytes,
            "num_tensors": len(plan.tensors),
            "type_counts": {k: {"tensors": n, "bytes": b} for k, (n, b) in plan.type_counts().items()},
            "fallbacks": [
                {"name": t.name, "from": t.fallback_from, "to": t.ggml_type, "row": t.shape[-1]}
                for t in plan.tensors
                if t.fallback_from
            ],
            "tokenizer_pre": self.tokenizer_pre,
            "tokenizer_pre_source": self.pre_source,
            "seconds": round(self.seconds, 3),
            "warnings": list(self.warnings),
            "tensors": [asdict(t) | {"shape": list(t.shape)} for t in plan.tensors],
        }


def convert_to_gguf(
    reference: str,
    out_path: Path | None,
    out_type: str,
    *,
    dry_run: bool = False,
    force: bool = False,
    progress: ProgressFn = no_progress,
) -> ConversionResult:
    start = time.perf_counter()
    out = parse_out_type(out_type)  # bad input fails before any loading
    if out_path is not None:
        out_path = Path(out_path)
        if out_path.is_dir():
            raise UsageError(f"{out_path} is a directory; pass a .gguf file path")
        if out_path.exists() and not force and not dry_run:
            raise UsageError(f"{out_path} exists (pass --force to replace it)")
    elif not dry_run:
        raise UsageError("pass an output file with -o/--output (or --dry-run)")
    source = resolve_model(reference)
    spec = load_spec(source)
    plan = plan_conversion(spec, out)  # raises for an architecture GGUF cannot hold
    # A GGUF source keeps its own tokenizer and general.* keys; no transformers tokenizer needed.
    fields = GGUFSource(source.path).file.fields if source.format is SourceFormat.GGUF else None
    loaded = None
    if dry_run:
        tokenizer = _tokenizer_only(source) if fields is None else None
    else:
        loaded = load_model(
            source, dtype=torch.float32, device="cpu", with_tokenizer=fields is None,
            fast_tokenizer=False, progress=progress,
        )  # fmt: skip
        spec, tokenizer = loaded.spec, loaded.tokenizer
    vocab = _vocab(source, spec, tokenizer, fields)
    values = _metadata(source, spec, plan, vocab, fields)
    writer = gguf.GGUFWriter(path=None, arch=plan.architecture)
    for key, value in values.items():
        writer.add_key_value(key, value.value, value.type, value.sub_type)
    for t in plan.tensors:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=Q[t.ggml_type])

    target = out_path if out_path is not None else Path(os.getcwd()) / "dry-run.gguf"
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        header_bytes = writer.fout[0].tell()
        if not dry_run:
            _write_tensors(writer, plan, _weights(loaded), spec, progress)
        writer.close()
        if dry_run:
            tmp.unlink()
        else:
            os.replace(tmp, target)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    file_bytes = _pad(header_bytes) + sum(_pad(t.nbytes) for t in plan.tensors)
    return ConversionResult(
        out_path,
        plan,
        file_bytes,
        vocab.pre,
        vocab.pre_source,
        time.perf_counter() - start,
        dry_run,
        vocab.warnings,
    )


def _tokenizer_only(source: ModelSource):
    from ..models.tokenizer import has_tokenizer, load_tokenizer_dir

    return load_tokenizer_dir(source.path, fast=False) if has_tokenizer(source.path) else None


def _vocab(source: ModelSource, spec: ModelSpec, tokenizer, fields: dict | None) -> VocabMetadata:
    if fields is not None:
        return meta.tokenizer_from_gguf(fields)
    if tokenizer is None:
        raise ModelError(f"{source.reference} has no tokenizer files; a GGUF file needs the tokenizer")
    return meta.tokenizer_from_hf(tokenizer, spec, source.path)


def _metadata(
    source: ModelSource, spec: ModelSpec, plan: ConversionPlan, vocab: VocabMetadata, fields: dict | None
) -> dict:
    if fields is not None:
        general = meta.general_from_gguf(fields)
    else:
        name = source.reference.rstrip("/").split("/")[-1] if source.origin == "hub" else None
        general = meta.general_from_hf(source.path, name, spec.num_params)
    values = general | meta.model_metadata(spec, plan.architecture, plan.out_type) | vocab.values
    return values | meta.closing_metadata()


def _weights(loaded: LoadedModel) -> dict[str, torch.Tensor]:
    """HF name -> fp32 tensor of every weight; GPTQ/AWQ layers dequantized."""
    from ...kernels.quant_linear import QuantLinear

    state = dict(loaded.model.state_dict())  # QuantLinear buffers are not in it (non-persistent)
    quantized = {n: m for n, m in loaded.model.named_modules() if isinstance(m, QuantLinear)}
    if quantized:
        state |= _dequantized(loaded.source, quantized)
    return state


def _dequantized(source: ModelSource, modules: dict) -> dict[str, torch.Tensor]:
    # Back to the checkpoint's packed tensors: QuantLinear keeps its codes in a kernel layout.
    from ..models import checkpoint
    from ..models.quantized import QuantScheme
    from ..quant import formats

    scheme = QuantScheme.from_config(checkpoint.read_config(source.path))
    packed: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in checkpoint.iter_tensors(source.path):
        part = scheme.split(name)
        if part is not None and part[0] in modules:
            packed.setdefault(part[0], {})[part[1]] = tensor
    out = {}
    for module, tensors in packed.items():
        if scheme.method == "awq":
            weight = formats.dequantize_awq(tensors, scheme.group_size, torch.float32)
        else:
            q, zeros, scales, g_idx = formats.unpack_gptq(tensors, bits=scheme.bits)
            if not scheme.zeros_minus_one:
                zeros = zeros - 1  # as QuantScheme.build: v2 never subtracted the 1 v1 adds back
            weight = formats.dequantize(q, zeros, scales, g_idx, torch.float32)
        out[f"{module}.weight"] = weight
        if modules[module].bias is not None:
            out[f"{module}.bias"] = modules[module].bias.float()
    return out


def _write_tensors(
    writer, plan: ConversionPlan, weights: dict, spec: ModelSpec, progress: ProgressFn
) -> None:
    total = len(plan.tensors)
    progress("converting tensors", 0, total)
    for i, data in enumerate(_quantized_tensors(plan, weights, spec), 1):
        writer.write_tensor_data(data)
        progress("converting tensors", i, total)


def _quantized_tensors(plan: ConversionPlan, weights: dict, spec: ModelSpec) -> Iterator[np.ndarray]:
    def source(hf_name: str) -> torch.Tensor:
        tensor = weights.get(hf_name)
        if tensor is None:
            raise ModelError(f"the model has no tensor {hf_name}")
        return to_gguf(spec, hf_name, tensor.detach().float())

    def job(t) -> np.ndarray:
        if not t.sources:
            array = meta.computed_tensor(spec, t.name)
        else:
            parts = [source(name) for name in t.sources]
            tensor = parts[0] if len(parts) == 1 else torch.stack(parts)  # experts: [E, rows, cols]
            if tuple(tensor.shape) != t.shape:
                raise ModelError(f"{t.name}: shape {tuple(tensor.shape)} from the model, expected {t.shape}")
            array = tensor.contiguous().numpy()
        data = quantize(array, Q[t.ggml_type])
        if data.nbytes != t.nbytes:
            raise ModelError(f"{t.name}: {data.nbytes} bytes quantized, the plan says {t.nbytes}")
        return data

    with ThreadPoolExecutor(_READ_AHEAD, thread_name_prefix="llmtool-gguf") as pool:
        pending = deque()
        for t in plan.tensors:
            pending.append(pool.submit(job, t))
            if len(pending) > _READ_AHEAD:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def quantize(array: np.ndarray, qtype: Q) -> np.ndarray:
    """float32 [rows, cols] (or 1-D) -> the tensor's bytes in ggml type `qtype`."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if qtype == Q.F32:
        return array
    if qtype == Q.F16:
        return array.astype(np.float16)
    if qtype in _K_TYPES:
        from ...kernels.ggml_kquants import quantize_kquant

        return quantize_kquant(array.reshape(-1, array.shape[-1]), qtype)
    return gguf.quants.quantize(array, qtype)


def _pad(n: int) -> int:
    alignment = gguf.GGUF_DEFAULT_ALIGNMENT
    return -(-n // alignment) * alignment
