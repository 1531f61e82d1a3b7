"""load_model: a model reference -> our CausalLM with weights, tokenizer and spec."""

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from ..errors import ModelError
from ..progress import ProgressFn, no_progress
from ..runtime import configure_threads, default_device, resolve_dtype
from . import checkpoint
from .gguf_source import GGUFSource
from .causal_lm import CausalLM
from .quantized import QuantScheme, install
from .resolve import ModelSource, SourceFormat, resolve_model
from .spec import ModelSpec, spec_from_hf_config
from .tokenizer import has_tokenizer, load_tokenizer_dir, load_tokenizer_gguf


@dataclass
class LoadedModel:
    source: ModelSource
    spec: ModelSpec
    model: CausalLM
    tokenizer: object | None  # a transformers tokenizer; None for a weights-only directory
    dtype: torch.dtype
    device: torch.device
    load_seconds: float

    def require_tokenizer(self):
        if self.tokenizer is None:
            raise ModelError(f"{self.source.reference} has no tokenizer files; this command needs one")
        return self.tokenizer


def load_spec(source: ModelSource) -> ModelSpec:
    if source.format is SourceFormat.GGUF:
        return GGUFSource(source.path).spec()
    return spec_from_hf_config(checkpoint.read_config(source.path))


def load_model(
    reference: str | ModelSource,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device | None = None,
    with_tokenizer: bool = True,
    fast_tokenizer: bool = True,
    progress: ProgressFn = no_progress,
) -> LoadedModel:
    """fast_tokenizer=False: transformers' tokenizer object even where FastTokenizer would do
    (export needs its save_pretrained)."""
    start = time.perf_counter()
    source = resolve_model(reference) if isinstance(reference, str) else reference
    device = torch.device(device) if device is not None else default_device()
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, device)
    if device.type == "cpu":
        configure_threads()

    # The tokenizer loads beside the weights: it is Rust and file reading (or, the first time
    # for a GGUF, transformers), the weights numpy/torch, so the two overlap on two cores.
    tokenizer_job = None
    if with_tokenizer:
        pool = ThreadPoolExecutor(1, thread_name_prefix="llmtool-tokenizer")
        tokenizer_job = pool.submit(_load_tokenizer, source, fast_tokenizer)
        pool.shutdown(wait=False)

    scheme = None
    if source.format is SourceFormat.GGUF:
        gguf = GGUFSource(source.path)
        spec, tensors, total = gguf.spec(), gguf.iter_tensors(), gguf.num_tensors()
    else:
        config = checkpoint.read_config(source.path)
        spec, scheme = spec_from_hf_config(config), QuantScheme.from_config(config)
        total = len(checkpoint.tensor_index(source.path))
        tensors = checkpoint.iter_tensors(source.path)

    model = _build(spec, tensors, total, torch_dtype, device, progress, scheme)
    tokenizer = tokenizer_job.result() if tokenizer_job is not None else None
    return LoadedModel(source, spec, model, tokenizer, torch_dtype, device, time.perf_counter() - start)


def _load_tokenizer(source: ModelSource, fast: bool):
    if source.format is SourceFormat.GGUF:
        return load_tokenizer_gguf(source.path, fast=fast)
    return load_tokenizer_dir(source.path, fast=fast) if has_tokenizer(source.path) else None


def _build(
    spec: ModelSpec, tensors, total: int, dtype, device, progress: ProgressFn, scheme: QuantScheme | None = None
) -> CausalLM:
    # Build on the meta device (no memory), then adopt each checkpoint tensor as it streams in.
    with torch.device("meta"):
        model = CausalLM(spec)
    expected = dict(model.state_dict())
    if spec.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    state = {}
    packed: dict[str, dict[str, torch.Tensor]] = {}  # quantized module -> its packed tensors
    progress("loading weights", 0, total)
    for i, (name, tensor) in enumerate(tensors, 1):
        progress("loading weights", i, total)
        part = scheme.split(name) if scheme is not None else None
        if part is not None:
            packed.setdefault(part[0], {})[part[1]] = tensor
            continue
        if name not in expected:
            continue  # e.g. a redundant lm_head.weight in a tied checkpoint, rotary buffers
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelError(
                f"tensor {name} has shape {tuple(tensor.shape)}, the config implies {tuple(expected[name].shape)}"
            )
        state[name] = tensor.to(device=device, dtype=dtype)
    if packed:
        covered = install(model, scheme, packed, state, dtype, device)
        expected = {k: v for k, v in expected.items() if k not in covered}
    missing = sorted(set(expected) - set(state))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelError(f"checkpoint is missing tensors: {', '.join(missing[:3])}{more}")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    return model.eval()
