"""The `llmtool` entry point: wires the sub-commands, nothing else."""

from typing import Annotated

import typer

from . import bench, convert_gguf, generate, models, plan_capacity, quantize, serve
from .console import HELP_MARKUP

app = typer.Typer(
    rich_markup_mode=HELP_MARKUP,
    name="llmtool",
    help="Deploy LLMs from one tool: inspect, export and quantize models, generate text, serve, benchmark.\n\n"
    "Example: llmtool models inspect smollm2-135m",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Each command states its one-line summary: Click would otherwise cut the docstring's first
# line to "..." to fit the commands list (always, in the plain help a pipe gets).
app.add_typer(models.app, name="models", short_help="List, inspect and export models.")
app.add_typer(bench.app, name="bench", short_help="Benchmark a server or our engine; gate CI on SLOs.")
app.command("generate", short_help="Greedy generation from a model, streamed.")(generate.generate)
app.command("serve", short_help="Serve a model with OpenAI's HTTP API.")(serve.serve)
app.command("quantize", short_help="Quantize a model to 4 or 8 bits: GPTQ, AWQ, RTN.")(quantize.quantize)
app.command("convert-gguf", short_help="Convert a model to a GGUF file.")(convert_gguf.convert_gguf)
app.command("plan-capacity", short_help="Plan GPUs for a request rate under latency SLOs.")(
    plan_capacity.plan_capacity
)


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
