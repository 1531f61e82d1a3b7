"""The hardware and model catalogs: `GPUSpec` and `ModelShape` read from TOML data files.

Catalog entries carry the datasheet or config.json they come from. A model can also come
from an HF config.json, a model directory, a .gguf file, or an alias the core resolves;
reading one never loads weights. This is not the planner: it only answers "what is this".
"""

import json
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ModelError, UsageError
from ..models.aliases import ALIASES
from ..models.spec import spec_from_hf_config

CATALOG_DIR = Path(__file__).parent / "catalogs"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class GPUSpec:
    name: str
    memory_bytes: int  # device memory (catalog gives GiB)
    hbm_bandwidth: float  # peak memory bandwidth, bytes/s
    bf16_flops: float  # dense peak, FLOP/s
    fp8_flops: float | None  # dense peak, FLOP/s; None where the part has no FP8
    int8_ops: float  # dense peak, OP/s
    link_bandwidth: float  # intra-node GPU-to-GPU, one direction, bytes/s
    price_per_hour: float  # default $ per GPU-hour
    source: str  # datasheet the numbers come from


@dataclass(frozen=True)
class ModelShape:
    """The shape capacity arithmetic needs. Unlike core.models.spec.ModelSpec (the engine's) it knows MoE
    (Mixtral) and drops what only the forward pass needs (rope, eps, token ids)."""

    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int  # per expert for MoE
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    params: int  # total parameters, all experts
    max_context: int
    num_experts: int = 1  # 1 = dense
    num_experts_per_tok: int = 1
    qkv_bias: bool = False
    source: str = ""  # config.json (or file) it was read from
    hf_id: str = ""

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    def kv_bytes_per_token(self, bytes_per_element: float) -> float:
        """K and V for every layer: 2 x layers x kv_heads x head_dim x bytes (GQA-aware)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_element

    def count_params(self) -> int:
        """Parameters counted from the shape; the catalog's `params` must equal this."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        attn = 2 * h * q + 2 * h * kv + (q + 2 * kv) * self.qkv_bias
        mlp = self.num_experts * 3 * h * self.intermediate_size + h * self.num_experts * self.is_moe
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return embed + self.num_layers * (attn + mlp + 2 * h) + h


def load_gpus(extra: str | Path | None = None) -> dict[str, GPUSpec]:
    """The GPU catalog plus calibrated profiles; entries in `extra` (a --gpu-spec TOML file)
    add to it or replace the entry of the same name."""
    gpus = {
        name: _gpu(name, entry, "gpus.toml") for name, entry in _read_toml(CATALOG_DIR / "gpus.toml").items()
    }
    from .profiles import load_profiles, profiles_path  # profiles build on this module

    for name, entry in load_profiles().items():  # calibrated hardware (--calibrate)
        gpus[name] = _gpu(name, entry, str(profiles_path()))
    if extra is not None:
        for name, entry in _read_toml(Path(extra)).items():
            old = next((k for k in gpus if k.lower() == name.lower()), None)
            gpus.pop(old, None)
            gpus[name] = _gpu(name, entry, str(extra))
    return gpus


def gpu(name: str, extra: str | Path | None = None) -> GPUSpec:
    """One GPU by name, case-insensitive."""
    gpus = load_gpus(extra)
    found = next((g for k, g in gpus.items() if k.lower() == name.strip().lower()), None)
    if found is None:
        raise UsageError(
            f"unknown GPU '{name}': known GPUs are {', '.join(gpus)} (or add one with --gpu-spec)"
        )
    return found


def load_models() -> dict[str, ModelShape]:
    entries = _read_toml(CATALOG_DIR / "models.toml")
    return {name: _model(name, entry) for name, entry in entries.items()}


def model_spec(reference: str) -> ModelShape:
    """A catalog name or HF id (case-insensitive), a config.json, a model directory, a
    .gguf file, an alias the core resolves, or a hub id (fetched as `--model` would be)."""
    models = load_models()
    key = reference.strip().lower()
    for spec in models.values():
        if key in (spec.name.lower(), spec.hf_id.lower()):
            return spec
    path = Path(reference).expanduser()
    if path.exists():
        return _spec_from_path(path)
    if reference in ALIASES or _HUB_ID.match(reference):
        from ..models.resolve import SourceFormat, resolve_model

        source = resolve_model(reference)
        if source.format is SourceFormat.GGUF:
            return _spec_from_gguf(source.path, reference)
        return _spec_from_path(source.path)
    raise UsageError(
        f"unknown model '{reference}': known models are {', '.join(models)}; "
        "or pass an HF config.json, a model directory, a .gguf file or a hub id (org/name)"
    )


def spec_from_config(config: dict, name: str = "", source: str = "") -> ModelShape:
    """A capacity ModelShape from an HF config.json dict (llama, mistral, qwen2, mixtral)."""
    is_mixtral = config.get("model_type") == "mixtral" or "MixtralForCausalLM" in (
        config.get("architectures") or []
    )
    if is_mixtral:
        # Mixtral's attention and expert shapes are Mistral's; let the core parse those.
        config = {**config, "model_type": "mistral", "architectures": ["MistralForCausalLM"]}
    core = spec_from_hf_config(config)
    spec = ModelShape(
        name=name or core.name or "model",
        **core.dims(),
        params=0,
        max_context=core.max_position_embeddings,
        num_experts=int(config.get("num_local_experts", 1)) if is_mixtral else 1,
        num_experts_per_tok=int(config.get("num_experts_per_tok", 1)) if is_mixtral else 1,
        qkv_bias=core.qkv_bias,
        source=source,
    )
    return replace(spec, params=spec.count_params())


def _spec_from_path(path: Path) -> ModelShape:
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise ModelError(f"{path.parent} has no config.json: not a Hugging Face model directory")
    if path.suffix.lower() == ".gguf":
        return _spec_from_gguf(path, path.stem)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read {path} as a config.json: {e}") from None
    name = config.get("_name_or_path") or path.parent.name
    return spec_from_config(config, name=str(name), source=str(path))


def _spec_from_gguf(path: Path, name: str) -> ModelShape:
    # GGUFSource imports torch; only this rare path pays for it.
    from ..models.gguf_source import GGUFSource

    return spec_from_config(GGUFSource(path).hf_config(), name=name, source=str(path))


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path} is not valid TOML: {e}") from None


def _gpu(name: str, entry: dict, where: str) -> GPUSpec:
    try:
        fp8 = entry.get("fp8_tflops")
        spec = GPUSpec(
            name=name,
            memory_bytes=int(float(entry["memory_gib"]) * 2**30),
            hbm_bandwidth=float(entry["hbm_bandwidth_tbps"]) * 1e12,
            bf16_flops=float(entry["bf16_tflops"]) * 1e12,
            fp8_flops=None if fp8 is None else float(fp8) * 1e12,
            int8_ops=float(entry.get("int8_tops", 2 * entry["bf16_tflops"])) * 1e12,
            link_bandwidth=float(entry["link_gbps"]) * 1e9,
            price_per_hour=float(entry.get("price_per_hour", 0.0)),
            source=str(entry.get("source", where)),
        )
    except KeyError as e:
        raise UsageError(f"GPU '{name}' in {where} is missing {e}") from None
    except (TypeError, ValueError) as e:
        raise UsageError(f"GPU '{name}' in {where} has a bad value: {e}") from None
    if min(spec.memory_bytes, spec.hbm_bandwidth, spec.bf16_flops, spec.link_bandwidth) <= 0:
        raise UsageError(f"GPU '{name}' in {where}: memory, bandwidth, TFLOPS and link must be positive")
    return spec


def _model(name: str, entry: dict) -> ModelShape:
    return ModelShape(name=name, **entry)
