"""Known errors become one red line and an exit code; LLMTOOL_DEBUG=1 shows the traceback."""

import functools

import typer

from ..core.errors import LlmtoolError
from .console import debug_enabled, err_console, print_error


def handle_errors(command):
    """Wrap a command so no traceback reaches the user (typer reads the wrapped signature)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except LlmtoolError as e:
            if debug_enabled():
                raise
            print_error(str(e))
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except Exception as e:
            if debug_enabled():
                raise
            print_error(f"internal error: {type(e).__name__}: {e} (set LLMTOOL_DEBUG=1 for the traceback)")
            raise typer.Exit(1) from None

    return wrapper
