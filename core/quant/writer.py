"""Write a quantized model as a checkpoint the ecosystem loads: GPTQ v1 (transformers,
vLLM, gptqmodel, us) or AWQ GEMM (transformers, vLLM, us), per REFERENCE.md.

Quantized linears become their packed tensors (formats.py); every other tensor (norms,
embeddings, biases) is written in fp16, the dtype GPTQ/AWQ kernels compute in. RTN writes
the GPTQ layout: the format fixes how codes are stored, not how they were chosen.
Written into a temp directory beside the target and renamed at the end.
"""

import json
from pathlib import Path

import torch

from ..errors import LlmtoolError
from ..files import atomic_dir
from ..models.export import generation_config, write_safetensors
from ..models.loader import LoadedModel
from ..models.spec import hf_config_from_spec
from .config import QuantConfig
from .formats import pack_awq, pack_gptq
from .gptq_layers import LinearResult

CHECKPOINT_DTYPE = torch.float16


def quantization_config(config: QuantConfig, damp: float | None, skipped: list[str]) -> dict:
    if config.method == "awq":
        return {
            "quant_method": "awq",
            "bits": config.bits,
            "group_size": config.group_size,
            "zero_point": not config.is_sym,
            "version": "gemm",
            "modules_to_not_convert": skipped or None,
        }
    return {
        "quant_method": "gptq",
        "bits": config.bits,
        "group_size": config.group_size,
        "desc_act": config.desc_act,
        "sym": config.is_sym,
        "damp_percent": damp if damp is not None else config.damp,
        "true_sequential": True,
        "static_groups": config.desc_act,  # act-order here keeps natural groups (g_idx = i // g)
        "checkpoint_format": "gptq",
        "modules_to_not_convert": skipped or None,
        "quantizer": [f"llmtool-{config.method}"],
    }


def quantized_state(model: torch.nn.Module, results: dict[str, LinearResult], config: QuantConfig, tied: bool) -> dict:
    """The model's tensors with each quantized linear's weight replaced by its packed form."""
    state = {}
    for name, tensor in model.state_dict().items():
        module = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and module in results:
            r = results[module].weight
            if config.method == "awq":
                packed = pack_awq(r.q, r.zeros, r.scales, bits=r.bits)
            else:
                packed = pack_gptq(r.q, r.zeros, r.scales, r.g_idx, bits=r.bits)
            state |= {f"{module}.{k}": v.contiguous() for k, v in packed.items()}
        elif not (tied and name == "lm_head.weight"):
            state[name] = tensor.to(CHECKPOINT_DTYPE).contiguous()
    return state


def check_target(out_dir: Path, force: bool) -> None:
    """Before any work: refuse to overwrite a non-empty directory without --force."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise LlmtoolError(f"{out_dir} exists and is not empty (pass --force to replace it)")


def hf_config(loaded: LoadedModel, model: torch.nn.Module, results: dict[str, LinearResult], config: QuantConfig) -> dict:
    damps = [r.damp for r in results.values() if r.damp is not None]
    skipped = sorted(name for name in _linear_names(model) if name not in results)
    return hf_config_from_spec(loaded.spec) | {
        "torch_dtype": "float16",
        "quantization_config": quantization_config(config, max(damps) if damps else None, skipped),
    }


def write_checkpoint(out_dir: Path, loaded: LoadedModel, state: dict, hf: dict, report: dict, *, force: bool) -> None:
    """state: quantized_state(...); hf: hf_config(...)."""
    out_dir = Path(out_dir)
    check_target(out_dir, force)
    # Built beside out_dir and renamed into place, with the modes mkdir would give (core/files.py).
    with atomic_dir(out_dir, replace=True) as tmp:
        write_safetensors(state, tmp)
        (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(generation_config(loaded), indent=2) + "\n")
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(str(tmp))
        (tmp / "quant_report.json").write_text(json.dumps(report, indent=2) + "\n")


def _linear_names(model: torch.nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name.startswith("model.layers.")]
