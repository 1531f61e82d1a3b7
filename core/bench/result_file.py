"""Read a benchmark result file of any tool we compare with, as our summary's shape: ours
(`llmtool bench --json`, either --json-format), vLLM's (`vllm bench serve --save-result`) and
GuideLLM's (`guidellm run --output kind=json`). The format is told by the keys, not the file
name. Not here: the comparison itself (the CLI's table).
"""

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from .guidellm_format import from_guidellm, is_guidellm
from .vllm_format import from_vllm, is_vllm

KNOWN = "llmtool bench --json, vllm bench serve --save-result or guidellm run --output kind=json"


@dataclass(frozen=True)
class ResultFile:
    path: Path
    tool: str  # "llmtool", "vllm" or "guidellm"
    summary: dict  # our Summary.to_dict() shape; keys another tool does not state are absent


def read_result(path: Path) -> ResultFile:
    """One run's summary; a file holding several runs (a sweep) or none is a UsageError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not a result of {KNOWN}") from None
    try:
        data = json.loads(text)
    except ValueError:
        data = _json_lines(text)
        if data is None:
            raise UsageError(f"{path} is not JSON, so not a result of {KNOWN}") from None
    if isinstance(data, list):  # vLLM --append-result, or our vllm-format sweep: one run per line
        raise UsageError(f"{path} holds {len(data)} runs (a sweep); compare takes one run per file")
    if isinstance(data, dict) and isinstance(data.get("summary"), dict):
        return ResultFile(Path(path), "llmtool", data["summary"])
    if isinstance(data, dict) and isinstance(data.get("steps"), list):
        raise UsageError(f"{path} is a sweep of {len(data['steps'])} runs; compare takes one run per file")
    if is_vllm(data):
        return ResultFile(Path(path), "vllm", from_vllm(data))
    if is_guidellm(data):
        benchmarks = data["benchmarks"]
        if len(benchmarks) != 1:
            raise UsageError(
                f"{path} holds {len(benchmarks)} GuideLLM benchmarks; compare takes one run per file"
            )
        return ResultFile(Path(path), "guidellm", from_guidellm(benchmarks[0]))
    raise UsageError(f"{path} is not a result of {KNOWN}")


def _json_lines(text: str) -> list | None:
    """vLLM's --append-result file: one JSON object per line."""
    try:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError:
        return None
    return rows if len(rows) > 1 else None
