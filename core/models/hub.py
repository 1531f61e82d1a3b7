"""Hugging Face Hub ids (org/name): fetched into the local HF cache when online.

Offline (HF_HUB_OFFLINE=1 or no route to the hub) a previously cached snapshot is used;
otherwise the user gets one line saying how to pass a local path instead.
"""

import os
from pathlib import Path

from ..errors import ModelError

# Only what our loader reads: config, safetensors weights, tokenizer and generation config.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"]


def fetch_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=ALLOW_PATTERNS, local_files_only=offline))
    except Exception as e:
        why = "offline (HF_HUB_OFFLINE is set)" if offline else f"{type(e).__name__}"
        raise ModelError(
            f"cannot fetch '{repo_id}' from the Hugging Face Hub ({why}) and it is not in the local cache: "
            "pass a local path instead (an HF model directory or a .gguf file)"
        ) from None
