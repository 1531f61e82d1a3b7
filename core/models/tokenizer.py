"""Tokenizers from an HF directory, or rebuilt from GGUF metadata.

A directory loads as FastTokenizer (tokenizers + jinja2, ~0.2 s) when it reproduces the
directory exactly, else through transformers (seconds to import); callers that need
transformers' own object (save_pretrained) ask for it with fast=False.

Rebuilding a tokenizer from GGUF metadata takes seconds (49k tokens, 49k merges), so the
result is cached under the llmtool cache dir, keyed by the file's identity.
"""

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import ModelError
from ..runtime import cache_dir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def has_tokenizer(model_dir: Path) -> bool:
    return any((model_dir / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer_dir(model_dir: Path, *, fast: bool = True):
    if fast:
        from .fast_tokenizer import FastTokenizer

        tokenizer = FastTokenizer.from_dir(model_dir)
        if tokenizer is not None:
            return tokenizer
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:
        raise ModelError(f"cannot load the tokenizer in {model_dir}: {e}") from None


def load_tokenizer_gguf(path: Path, *, fast: bool = True):
    cached = _cache_path(path)
    if cached.is_dir():
        return load_tokenizer_dir(cached, fast=fast)
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:
        raise ModelError(f"cannot build a tokenizer from the metadata of {path.name}: {e}") from None
    _save_atomically(tokenizer, cached)
    return tokenizer


def _cache_path(path: Path) -> Path:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return Path(cache_dir()) / "tokenizers" / hashlib.sha256(key.encode()).hexdigest()[:16]


def _save_atomically(tokenizer, target: Path) -> None:
    # Cache writes are best effort: a read-only home must not break loading.
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, target)
    except OSError:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
