"""Writing --json results: to stdout for '-', else atomically to a file (core/files.py)."""

import sys
from pathlib import Path

from ..core.files import write_text


def write_json(text: str, path: Path) -> None:
    if str(path) == "-":
        sys.stdout.write(text + "\n")
        return
    write_text(path, text + "\n")
