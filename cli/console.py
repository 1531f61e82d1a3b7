"""The one Rich console pair: results on stdout, progress and errors on stderr; and the help
style a pipe gets."""

import os
import sys

from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)

# Piped help (`llmtool plan-capacity --help | less`, a CI log) is 80 columns wide, and Typer's
# boxed Rich panels cut long option names and values to "…" to fit it. Click's plain help
# wraps instead and never cuts, so it is what a pipe gets; a terminal keeps the Rich panels.
HELP_MARKUP = "rich" if sys.stdout.isatty() else None


def debug_enabled() -> bool:
    return os.environ.get("LLMTOOL_DEBUG", "") not in ("", "0")


def print_error(message: str) -> None:
    # soft_wrap: the message stays one line however narrow the terminal.
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
