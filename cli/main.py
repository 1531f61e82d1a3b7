"""The `llmtool` entry point: wires the sub-commands, nothing else."""

from typing import Annotated

import typer

from . import bench, convert_gguf, generate, models, plan_capacity, quantize, serve

app = typer.Typer(
    name="llmtool",
    help="Deploy LLMs from one tool: inspect, export and quantize models, generate text, serve, benchmark.\n\n"
    "Example: llmtool models inspect smollm2-135m",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(models.app, name="models")
app.add_typer(bench.app, name="bench")
app.command("generate")(generate.generate)
app.command("serve")(serve.serve)
app.command("quantize")(quantize.quantize)
app.command("convert-gguf")(convert_gguf.convert_gguf)
app.command("plan-capacity")(plan_capacity.plan_capacity)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"llmtool {version('llmtool')}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Deploy LLMs from one tool."""


def main() -> None:
    app()
