"""Option aliases shared by every command, and `--config FILE.toml` presets."""

import tomllib
from pathlib import Path
from typing import Annotated

import typer


def _load_config(ctx: typer.Context, value: Path | None) -> Path | None:
    """Eager: fills the command's defaults from TOML before its other options are parsed.

    Top-level keys apply to every command that has such an option; a table named after
    the command ([generate], [serve], ...) applies to it alone and must hold only its options."""
    if value is None or ctx.resilient_parsing:
        return value
    try:
        data = tomllib.loads(value.read_text(encoding="utf-8"))  # TOML is UTF-8 whatever the locale
    except OSError as e:
        raise typer.BadParameter(f"cannot read {value}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise typer.BadParameter(f"{value} is not valid TOML: {e}") from None
    known = {p.name for p in ctx.command.params if p.name}
    shared = {k.replace("-", "_"): v for k, v in data.items() if not isinstance(v, dict)}
    table = data.get(ctx.info_name, {})
    if not isinstance(table, dict):  # `generate = 1` would otherwise crash with a traceback
        raise typer.BadParameter(
            f"{ctx.info_name} in {value} must be a table ([{ctx.info_name}]), not a value"
        )
    own = {k.replace("-", "_"): v for k, v in table.items()}
    unknown = sorted(set(own) - known)
    if unknown:
        raise typer.BadParameter(f"[{ctx.info_name}] in {value} has unknown options: {', '.join(unknown)}")
    defaults = {k: v for k, v in shared.items() if k in known} | own
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Alias (smollm2-135m), local HF directory, .gguf file, or hub id (org/name).",
    ),
]
DtypeOpt = Annotated[
    str,
    typer.Option("--dtype", help="auto (bf16 on CPUs with AVX512_BF16, else fp32), bf16, fp16 or fp32."),
]
JsonOpt = Annotated[
    Path | None,
    typer.Option("--json", help="Also write the result as JSON to this path ('-' for stdout)."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="TOML preset (see sample_configs/); command-line flags win.",
        is_eager=True,
        callback=_load_config,
    ),
]
