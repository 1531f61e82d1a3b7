"""Writing --json results: to stdout for '-', else atomically to a file."""

import os
import sys
import tempfile
from pathlib import Path


def write_json(text: str, path: Path) -> None:
    if str(path) == "-":
        sys.stdout.write(text + "\n")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a result file is not
    os.replace(tmp, path)
