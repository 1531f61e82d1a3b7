"""export_hf: write any loadable model as a Hugging Face safetensors directory.

The result loads in transformers (AutoModelForCausalLM + AutoTokenizer); it is how the
quantize and convert-gguf tests get an HF copy of the default model. Written to a temp
directory beside the target and renamed at the end, so a failure leaves nothing behind.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..errors import LlmtoolError
from ..files import atomic_dir
from ..progress import ProgressFn, no_progress
from ..runtime import dtype_name, resolve_dtype
from . import checkpoint
from .loader import LoadedModel, load_model
from .resolve import SourceFormat, resolve_model
from .spec import hf_config_from_spec

SHARD_BYTES = 2 * 1024**3  # transformers' convention is a few GB per shard


@dataclass(frozen=True)
class ExportResult:
    path: Path
    dtype: str
    num_tensors: int
    num_shards: int
    total_bytes: int


def export_hf(
    reference: str,
    out_dir: Path,
    *,
    dtype: str | None = None,
    force: bool = False,
    progress: ProgressFn = no_progress,
) -> ExportResult:
    """dtype None keeps the source precision: fp32 for dequantized GGUF, else the stored dtype."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise LlmtoolError(f"{out_dir} exists and is not empty (pass --force to replace it)")
    source = resolve_model(reference)
    torch_dtype = resolve_dtype(dtype) if dtype else _source_dtype(source)
    loaded = load_model(source, dtype=torch_dtype, device="cpu", fast_tokenizer=False, progress=progress)
    tokenizer = loaded.require_tokenizer()

    # Built beside out_dir and renamed into place (with the modes mkdir would give): a crash
    # leaves no half-written checkpoint. out_dir was checked above: empty, or --force.
    with atomic_dir(out_dir, replace=True) as tmp:
        state = loaded.model.state_dict()
        if loaded.spec.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # transformers re-ties it from the config
        shards = write_safetensors(state, tmp, progress)
        config = hf_config_from_spec(loaded.spec) | {"torch_dtype": str(torch_dtype).removeprefix("torch.")}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(generation_config(loaded), indent=2) + "\n")
        tokenizer.save_pretrained(str(tmp))
    total = sum(f.stat().st_size for f in out_dir.glob("*.safetensors"))
    num_tensors = sum(len(names) for names in shards.values())
    return ExportResult(out_dir, dtype_name(torch_dtype), num_tensors, len(shards), total)


def _source_dtype(source) -> torch.dtype:
    if source.format is SourceFormat.GGUF:
        return torch.float32
    dtypes = {dt for _, dt, _ in checkpoint.tensor_index(source.path).values()}
    for name, dt in (("BF16", torch.bfloat16), ("F16", torch.float16)):
        if dtypes == {name}:
            return dt
    return torch.float32


def write_safetensors(state: dict[str, torch.Tensor], folder: Path, progress: ProgressFn = no_progress) -> dict[str, list[str]]:
    """state -> model.safetensors (or numbered shards plus their index) in folder; returns
    {file name: tensor names}."""
    names = sorted(state)
    groups: list[list[str]] = [[]]
    size = 0
    for name in names:
        nbytes = state[name].numel() * state[name].element_size()
        if groups[-1] and size + nbytes > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    shards = {}
    for i, group in enumerate(groups, 1):
        progress("writing safetensors", i - 1, len(groups))
        fname = "model.safetensors" if len(groups) == 1 else f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: state[n].contiguous() for n in group}, str(folder / fname), metadata={"format": "pt"})
        shards[fname] = group
    progress("writing safetensors", len(groups), len(groups))
    if len(groups) > 1:
        weight_map = {n: fname for fname, group in shards.items() for n in group}
        index = {
            "metadata": {"total_size": sum(s.numel() * s.element_size() for s in state.values())},
            "weight_map": weight_map,
        }
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return shards


def generation_config(loaded: LoadedModel) -> dict:
    spec = loaded.spec
    eos = list(spec.eos_token_ids)
    config = {"bos_token_id": spec.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else eos}
    pad = getattr(loaded.tokenizer, "pad_token_id", None)
    if pad is not None:
        config["pad_token_id"] = pad
    return config
