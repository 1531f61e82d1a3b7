"""Reading a local Hugging Face model directory: config.json and *.safetensors shards.

Tensors are read lazily, one at a time, so loading never holds two copies of a model.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import ModelError


def read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{model_dir} has no config.json: not a Hugging Face model directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{path} is not valid JSON ({e})") from None


def safetensors_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        other = "pytorch .bin weights are not supported, " if list(model_dir.glob("*.bin")) else ""
        raise ModelError(f"{model_dir} has no *.safetensors weights ({other}save with safetensors)")
    return files


def tensor_index(model_dir: Path) -> dict[str, tuple[Path, str, tuple[int, ...]]]:
    """name -> (file, dtype, shape) from the safetensors headers alone (no tensor data read)."""
    index = {}
    for path in safetensors_files(model_dir):
        with _open(path) as f:
            for name in f.keys():
                sl = f.get_slice(name)
                index[name] = (path, str(sl.get_dtype()), tuple(sl.get_shape()))
    return index


def iter_tensors(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for path in safetensors_files(model_dir):
        with _open(path) as f:
            for name in f.keys():
                try:
                    yield name, f.get_tensor(name)
                except Exception as e:  # safetensors raises its own error type for truncated data
                    raise ModelError(f"corrupt safetensors file {path.name}: {e}") from None


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except Exception as e:
        raise ModelError(f"corrupt safetensors file {path}: {e}") from None
