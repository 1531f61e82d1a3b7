"""`llmtool convert-gguf MODEL -o OUT.gguf --type TYPE`: a GGUF file llama.cpp loads."""

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from .console import console, err_console
from .errors import handle_errors
from .options import ConfigOpt, JsonOpt
from .output import write_json
from .progress import rich_progress
from .table import Table

_TYPES = "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, q3_k_m, q4_k_s, q4_k_m, q5_k_m"


@handle_errors
def convert_gguf(
    model: Annotated[
        str, typer.Argument(help="Alias (smollm2-135m), local HF directory (also GPTQ/AWQ) or .gguf file.")
    ],
    out_path: Annotated[Path | None, typer.Option("--output", "-o", help="GGUF file to write.")] = None,
    out_type: Annotated[
        str, typer.Option("--type", "-t", help=f"Tensor type or llama.cpp mix: {_TYPES}.")
    ] = "f16",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the per-tensor plan and the file size; write nothing.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output file.")] = False,
    json_path: JsonOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Convert a model to GGUF with llama.cpp's tensor-type rules: norms in F32, the output tensor
    in Q6_K, the _M mixes' promoted attn_v / ffn_down layers, and a 32-wide fallback type where a
    row does not split into 256-weight K-quant blocks (each one is announced).

    Example: llmtool convert-gguf smollm2-135m -o smollm2-q4_k_m.gguf --type q4_k_m
    """
    from ..core.gguf.writer import convert_to_gguf

    with rich_progress() as progress:
        result = convert_to_gguf(model, out_path, out_type, dry_run=dry_run, force=force, progress=progress)
    data = result.to_dict()
    if json_path:
        write_json(json.dumps(data, indent=2), json_path)
        if str(json_path) == "-":
            return
    for warning in data["warnings"]:
        err_console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True, highlight=False)
    if dry_run:
        console.print(plan_table(data))
    console.print(summary_table(data))
    console.print(
        f"tokenizer pre '{data['tokenizer_pre']}' ({data['tokenizer_pre_source']}); "
        f"{len(data['fallbacks'])} fallback(s); {data['seconds']:.1f} s",
        highlight=False,
    )
    for line in fallback_lines(data["fallbacks"]):
        console.print(f"[yellow]fallback:[/] {line}", soft_wrap=True, highlight=False)


def plan_table(r: dict) -> Table:
    table = Table(title=f"plan: {r['type']} ({len(r['tensors'])} tensors)", title_justify="left")
    for col, justify in (
        ("tensor", "left"),
        ("shape", "right"),
        ("type", "left"),
        ("bytes", "right"),
        ("note", "left"),
    ):
        table.add_column(col, justify=justify)
    for t in r["tensors"]:
        table.add_row(
            t["name"], " x ".join(map(str, t["shape"])), t["ggml_type"], f"{t['nbytes']:,}", t["note"]
        )
    return table


def summary_table(r: dict) -> Table:
    if r["dry_run"]:
        done = f"dry run, would write {r['output']}" if r["output"] else "dry run, nothing written"
    else:
        done = f"wrote {r['output']}"
    title = f"{r['type']} ({r['file_type']}, {r['architecture']}): {done}"
    table = Table(title=title, title_justify="left")
    table.add_column("ggml type")
    table.add_column("tensors", justify="right")
    table.add_column("size", justify="right")
    table.add_column("share", justify="right")
    total = max(r["tensor_bytes"], 1)
    for name, c in r["type_counts"].items():
        table.add_row(name, str(c["tensors"]), _size(c["bytes"]), f"{100 * c['bytes'] / total:.1f}%")
    table.add_section()
    table.add_row("file", str(r["num_tensors"]), _size(r["file_bytes"]), "")
    return table


def fallback_lines(fallbacks: list[dict]) -> list[str]:
    """Group 'blk.3.attn_q.weight Q4_K -> Q5_0' over layers into one line per tensor kind."""
    from ..core.gguf.plan import block_size

    groups: dict[tuple[str, str, str, int], list[str]] = {}
    for f in fallbacks:
        m = re.match(r"blk\.(\d+)\.(.*)", f["name"])
        kind, layer = (f"blk.N.{m.group(2)}", m.group(1)) if m else (f["name"], "")
        groups.setdefault((kind, f["from"], f["to"], f["row"]), []).append(layer)
    lines = []
    for (kind, src, dst, row), layers in groups.items():
        where = f" ({len(layers)} layers)" if layers[0] else ""
        lines.append(
            f"{kind}{where}: {src} -> {dst} (rows of {row} do not split into {src}'s {block_size(src)}-blocks)"
        )
    return lines


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"
