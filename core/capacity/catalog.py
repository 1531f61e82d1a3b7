"""The hardware and model catalogs: `GPUSpec` and `ModelShape` read from TOML data files.

Catalog entries carry the datasheet or config.json they come from. A model can also come
from an HF config.json, a model directory, a .gguf file, or an alias the core resolves;
reading one never loads weights. This is not the planner: it only answers "what is this".
"""

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError, UsageError
from ..models import counts
from ..models.aliases import ALIASES
from ..models.spec import ModelSpec, spec_from_hf_config

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
    """A model as capacity planning sees it: the engine's ModelSpec (any registered family:
    MoE, sliding windows, qk-norm, sandwich norms...) plus a name, the context to plan for and
    where it came from. Every count (parameters, linear weights, KV bytes, FLOPs) comes from
    core.models.counts on `spec`; the properties below are shorthands the planner reads."""

    name: str
    spec: ModelSpec
    max_context: int
    source: str = ""  # config.json (or file, or catalog URL) it was read from
    hf_id: str = ""

    num_layers = property(lambda self: self.spec.num_layers)
    hidden_size = property(lambda self: self.spec.hidden_size)
    num_heads = property(lambda self: self.spec.num_heads)
    num_kv_heads = property(lambda self: self.spec.num_kv_heads)
    head_dim = property(lambda self: self.spec.head_dim)
    vocab_size = property(lambda self: self.spec.vocab_size)
    tie_word_embeddings = property(lambda self: self.spec.tie_word_embeddings)
    qkv_bias = property(lambda self: self.spec.qkv_bias)

    @property
    def intermediate_size(self) -> int:
        """One expert's MLP width for an MoE, the MLP's otherwise."""
        return self.spec.moe.intermediate_size if self.spec.moe else self.spec.intermediate_size

    @property
    def num_experts(self) -> int:
        return counts.num_experts(self.spec)

    @property
    def num_experts_per_tok(self) -> int:
        return counts.experts_per_token(self.spec)

    @property
    def is_moe(self) -> bool:
        return self.spec.moe is not None

    @property
    def params(self) -> int:
        """Total parameters, all experts (embeddings and lm_head included, tied once)."""
        return counts.count_params(self.spec)

    @property
    def active_params(self) -> int:
        """Parameters one token reads: top_k experts of an MoE."""
        return counts.active_params(self.spec)

    def count_params(self) -> int:
        return self.params

    def kv_bytes_per_token(self, bytes_per_element: float, context: int | None = None) -> float:
        """K and V per token over all layers; with `context`, sliding-window layers count only
        min(W, context) / context of a full layer (see counts.kv_bytes_per_token)."""
        return counts.kv_bytes_per_token(self.spec, bytes_per_element, context)


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


def spec_from_config(config: dict, name: str = "", source: str = "", hf_id: str = "") -> ModelShape:
    """A capacity ModelShape from an HF config.json dict of any registered family."""
    if "text_config" in config and "hidden_size" not in config:  # Gemma 3's multimodal wrapper
        config = {
            **config["text_config"],
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": "gemma3_text",
        }
    core = spec_from_hf_config(config)
    return ModelShape(
        name=name or core.name or "model",
        spec=core,
        max_context=core.max_position_embeddings,
        source=source,
        hf_id=hf_id,
    )


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
    """A catalog entry: `config` holds the config.json keys the family reads; `params`, the
    total it must count to, guards against a mistyped shape."""
    try:
        model = spec_from_config(
            dict(entry["config"]), name=name, source=entry["source"], hf_id=entry["hf_id"]
        )
    except KeyError as e:
        raise UsageError(f"model '{name}' in models.toml is missing {e}") from None
    if "params" in entry and model.params != int(entry["params"]):
        raise UsageError(
            f"model '{name}' in models.toml states {entry['params']:,} parameters, its shape counts {model.params:,}"
        )
    return model
