"""A progress callback the core reports long work through, without knowing who draws it.

The CLI passes a Rich-backed callback; library users pass nothing and see nothing.
"""

from collections.abc import Callable

# progress(task, completed, total): `task` names the work ("loading weights"); called
# with completed == 0 first and completed == total last.
ProgressFn = Callable[[str, int, int], None]


def no_progress(task: str, completed: int, total: int) -> None:
    """The default callback: report nothing."""
