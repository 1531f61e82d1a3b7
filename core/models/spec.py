"""ModelSpec: the shape of a Llama-family model, read from an HF config (or GGUF metadata).

Only what the forward pass, the KV cache and the planners need; not a full HF config.
"""

from dataclasses import dataclass, field

from ..errors import ModelError

# HF architecture name -> our family name; all run through core/models/llama.py.
HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
FAMILY_TO_HF = {family: arch for arch, family in HF_ARCHITECTURES.items()}
ROPE_KINDS = ("default", "linear", "llama3")


@dataclass(frozen=True)
class RopeSpec:
    theta: float = 10000.0
    kind: str = "default"  # one of ROPE_KINDS
    factor: float = 1.0  # linear and llama3 scaling factor
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position: int = 8192  # llama3 only
    # Per-frequency divisors as GGUF stores Llama-3 scaling (`rope_freqs`); overrides `kind`.
    freq_factors: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ModelSpec:
    family: str  # "llama" | "mistral" | "qwen2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope: RopeSpec = field(default_factory=RopeSpec)
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2, and Llama with attention_bias
    o_bias: bool = False  # Llama with attention_bias only
    mlp_bias: bool = False
    sliding_window: int | None = None  # Mistral v0.1: keys older than this are not attended
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    name: str = ""

    @property
    def hf_architecture(self) -> str:
        return FAMILY_TO_HF[self.family]

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def dims(self) -> dict[str, int | bool]:
        """The transformer's shape, by field name: what summaries of a model (inspect's,
        capacity planning's) copy from the spec."""
        names = ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim",
                 "vocab_size", "tie_word_embeddings")  # fmt: skip
        return {n: getattr(self, n) for n in names}

    def kv_bytes_per_token(self, bytes_per_element: int) -> int:
        """K and V for every layer: 2 x layers x kv_heads x head_dim x bytes (GQA-aware)."""
        return 2 * self.num_layers * self.kv_size * bytes_per_element

    @property
    def num_params(self) -> int:
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        attn = h * self.q_size + 2 * h * self.kv_size + self.q_size * h
        attn += (self.q_size + 2 * self.kv_size) * self.qkv_bias + h * self.o_bias
        mlp = 3 * h * i + (2 * i + h) * self.mlp_bias
        per_layer = attn + mlp + 2 * h
        head = 0 if self.tie_word_embeddings else v * h
        return v * h + self.num_layers * per_layer + h + head


def spec_from_hf_config(config: dict) -> ModelSpec:
    """Build a ModelSpec from a config.json dict; unsupported models raise ModelError."""
    archs = config.get("architectures") or []
    family = next((HF_ARCHITECTURES[a] for a in archs if a in HF_ARCHITECTURES), None)
    if family is None:
        family = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}.get(config.get("model_type", ""))
    if family is None:
        got = ", ".join(archs) or config.get("model_type") or "unknown"
        raise ModelError(f"unsupported architecture '{got}': supported are {', '.join(HF_ARCHITECTURES)}")
    act = config.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ModelError(f"unsupported activation '{act}': the Llama family uses silu")
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        spec = ModelSpec(
            family=family,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            max_position_embeddings=int(config.get("max_position_embeddings", 4096)),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope=_rope_from_config(config),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=family == "qwen2" or bool(config.get("attention_bias", False)),
            o_bias=family == "llama" and bool(config.get("attention_bias", False)),
            mlp_bias=bool(config.get("mlp_bias", False)),
            sliding_window=_sliding_window(family, config),
            bos_token_id=config.get("bos_token_id"),
            eos_token_ids=_as_tuple(config.get("eos_token_id")),
            name=str(config.get("_name_or_path", "")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"config.json is missing or has a bad value for {e}") from None
    if spec.num_heads % spec.num_kv_heads:
        raise ModelError(f"{spec.num_heads} attention heads do not divide into {spec.num_kv_heads} KV heads")
    return spec


def hf_config_from_spec(spec: ModelSpec) -> dict:
    """The config.json transformers reads back into the same model (used by `models export`)."""
    config = {
        "architectures": [spec.hf_architecture],
        "model_type": spec.family,
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_theta": spec.rope.theta,
        "rope_scaling": _rope_scaling_dict(spec.rope),
        "tie_word_embeddings": spec.tie_word_embeddings,
        "bos_token_id": spec.bos_token_id,
        "eos_token_id": spec.eos_token_ids[0] if len(spec.eos_token_ids) == 1 else list(spec.eos_token_ids),
    }
    if spec.family == "llama":
        config["attention_bias"] = spec.qkv_bias
        config["mlp_bias"] = spec.mlp_bias
    if spec.family == "mistral":
        config["sliding_window"] = spec.sliding_window
    return config


def _as_tuple(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def _sliding_window(family: str, config: dict) -> int | None:
    if family == "mistral":
        return config.get("sliding_window")
    if family == "qwen2" and config.get("use_sliding_window"):
        raise ModelError("Qwen2 with use_sliding_window=true is not supported yet")
    return None


def _rope_from_config(config: dict) -> RopeSpec:
    # transformers 5 writes `rope_parameters` (theta inside); older configs write
    # `rope_theta` and `rope_scaling` side by side. Accept both.
    params = dict(config.get("rope_parameters") or {})
    scaling = config.get("rope_scaling") or {}
    params = {**scaling, **params}
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind not in ROPE_KINDS:
        raise ModelError(f"unsupported rope scaling '{kind}': supported are {', '.join(ROPE_KINDS)}")
    return RopeSpec(
        theta=theta,
        kind=kind,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position=int(params.get("original_max_position_embeddings", 8192)),
    )


def _rope_scaling_dict(rope: RopeSpec) -> dict | None:
    if rope.freq_factors is not None:
        raise ModelError("this model stores Llama-3 rope scaling as raw frequency factors; cannot export it")
    if rope.kind == "default":
        return None
    if rope.kind == "linear":
        return {"rope_type": "linear", "factor": rope.factor}
    return {
        "rope_type": "llama3",
        "factor": rope.factor,
        "low_freq_factor": rope.low_freq_factor,
        "high_freq_factor": rope.high_freq_factor,
        "original_max_position_embeddings": rope.original_max_position,
    }
