"""The one Rich console pair: results on stdout, progress and errors on stderr."""

import os

from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def debug_enabled() -> bool:
    return os.environ.get("LLMTOOL_DEBUG", "") not in ("", "0")


def print_error(message: str) -> None:
    # soft_wrap: the message stays one line however narrow the terminal.
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
