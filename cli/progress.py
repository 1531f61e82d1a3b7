"""A Rich progress bar behind the core's ProgressFn callback."""

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..core.progress import ProgressFn
from .console import err_console


@contextmanager
def rich_progress() -> Iterator[ProgressFn]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # Off when stderr is not a terminal: in logs a live bar is noise (and leaves a blank line).
    with Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal) as bar:
        tasks: dict[str, int] = {}

        def update(task: str, completed: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = bar.add_task(task, total=total)
            bar.update(tasks[task], completed=completed, total=total)

        yield update
