"""`llmtool models list | inspect | export`."""

import json
from pathlib import Path
from typing import Annotated

import typer

from ..core.data_packages import install_hint
from ..core.models.aliases import ALIASES, DEFAULT_MODEL, alias_path
from .console import HELP_MARKUP, console
from .errors import handle_errors
from .options import ConfigOpt, JsonOpt
from .output import write_json
from .progress import rich_progress
from .table import Table

app = typer.Typer(help="List, inspect and export models.", no_args_is_help=True, rich_markup_mode=HELP_MARKUP)

ModelArg = Annotated[str, typer.Argument(help="Alias, local HF directory, .gguf file, or hub id.")]


@app.command("list", short_help="Known model aliases and whether they are installed.")
@handle_errors
def list_models(json_path: JsonOpt = None, config: ConfigOpt = None) -> None:
    """Known model aliases, whether their package is installed, and their size.

    Example: llmtool models list
    """
    rows = []
    for alias in ALIASES.values():
        path = alias_path(alias)
        rows.append(
            {
                "alias": alias.name,
                "default": alias.name == DEFAULT_MODEL,
                "package": alias.package,
                "installed": path is not None,
                "bytes": path.stat().st_size if path else None,
                "path": str(path) if path else None,
                "hub_id": alias.hub_id,
                "description": alias.description,
            }
        )
    if json_path:
        write_json(json.dumps(rows, indent=2), json_path)
        if str(json_path) == "-":
            return
    table = Table(title="Model aliases")
    for col in ("alias", "installed", "size", "package", "description"):
        table.add_column(col)
    for r in rows:
        installed = "[green]yes[/]" if r["installed"] else f"[red]no[/] ({install_hint(r['package'])})"
        name = r["alias"] + (" (default)" if r["default"] else "")
        table.add_row(name, installed, _size(r["bytes"]), r["package"], r["description"])
    console.print(table)


@app.command("inspect", short_help="Architecture, size, quantization and KV cost of a model.")
@handle_errors
def inspect(
    model: ModelArg = DEFAULT_MODEL,
    tensors: Annotated[
        bool, typer.Option("--tensors", help="List every tensor with its shape and type.")
    ] = False,
    json_path: JsonOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Architecture, size, quantization and KV-cache cost of a model, from its headers.

    Example: llmtool models inspect smollm2-135m --tensors
    """
    from ..core.models.inspect import inspect_model

    info = inspect_model(model)
    if json_path:
        write_json(info.to_json(), json_path)
        if str(json_path) == "-":
            return
    table = Table(title=f"{info.reference}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    kv = ", ".join(f"{_size(b)} ({d})" for d, b in info.kv_bytes_per_token.items())
    if info.kv_bytes_per_token_at_context != info.kv_bytes_per_token:  # sliding-window layers
        at = ", ".join(f"{_size(b)} ({d})" for d, b in info.kv_bytes_per_token_at_context.items())
        kv += f"; averaged over {info.context_length:,} tokens (windowed layers): {at}"
    types = ", ".join(f"{t} x{n}" for t, n in info.tensor_types.items())
    params = f"{info.num_params / 1e6:,.1f} M"
    if info.num_experts > 1:
        params += (
            f" ({info.num_experts} experts, {info.experts_per_token} per token: "
            f"{info.active_params / 1e6:,.1f} M active)"
        )
    for key, value in (
        ("name", info.name),
        ("path", info.path),
        ("format", f"{info.format} ({info.origin})"),
        ("architecture", info.architecture),
        ("parameters", params),
        ("forward FLOPs / token", f"{info.flops_per_token / 1e9:,.2f} G (+ attention, growing with context)"),
        ("layers", str(info.num_layers)),
        ("hidden / ffn", f"{info.hidden_size} / {info.intermediate_size}"),
        ("heads / kv heads / head dim", f"{info.num_heads} / {info.num_kv_heads} / {info.head_dim}"),
        ("vocab", f"{info.vocab_size:,}"),
        ("context", f"{info.context_length:,}"),
        ("rope", info.rope),
        ("tied embeddings", "yes" if info.tie_word_embeddings else "no"),
        ("chat template", "yes" if info.has_chat_template else "no"),
        ("tensor types", types),
        ("quantization", info.quantization or "none (weights as stored)"),
        ("file size", _size(info.file_bytes)),
        ("KV cache per token", kv),
        ("runtime dtype (auto)", info.runtime_dtype),
    ):
        table.add_row(key, value)
    console.print(table)
    if tensors:
        t = Table(title="tensors")
        for col in ("name", "shape", "type"):
            t.add_column(col)
        for ti in info.tensors:
            t.add_row(ti.name, " x ".join(map(str, ti.shape)), ti.type)
        console.print(t)


@app.command("export", short_help="Write a model as a Hugging Face safetensors directory.")
@handle_errors
def export(
    model: ModelArg,
    out_dir: Annotated[Path, typer.Argument(help="Directory to write (must not exist, or be empty).")],
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="bf16, fp16 or fp32; default keeps the source precision.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing directory.")] = False,
    json_path: JsonOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write a model as a Hugging Face safetensors directory that transformers loads.

    Example: llmtool models export smollm2-135m ./smollm2-hf
    """
    from ..core.models.export import export_hf

    with rich_progress() as progress:
        result = export_hf(model, out_dir, dtype=dtype, force=force, progress=progress)
    summary = {
        "path": str(result.path),
        "dtype": result.dtype,
        "tensors": result.num_tensors,
        "shards": result.num_shards,
        "bytes": result.total_bytes,
    }
    if json_path:
        write_json(json.dumps(summary, indent=2), json_path)
    console.print(
        f"wrote [bold]{result.path}[/] ({result.num_tensors} tensors, {result.dtype}, "
        f"{_size(result.total_bytes)} in {result.num_shards} shard(s))"
    )


def _size(nbytes: int | None) -> str:
    if nbytes is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:,.0f} {unit}" if unit == "B" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1024
    return ""
