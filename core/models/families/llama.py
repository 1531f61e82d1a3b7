"""Llama (2, 3, 3.x; SmolLM2): the root family. Every other family inherits from it (or from
a neighbour) and overrides only what differs.

A family says: config.json -> ModelSpec fields (`fields`), the checkpoint's module names
(the class attributes), its GGUF architecture, and the config.json that reads back into the
same spec (`hf_config`). The forward is layers/, built from the spec and these names.
"""

from ...errors import ModelError
from ..registry import register
from ..spec import ACTIVATIONS, FULL, ROPE_KINDS, SLIDING, ModelSpec, RopeSpec

_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh"}


@register
class Llama:
    name = "llama"
    model_type = "llama"
    architectures: tuple[str, ...] = ("LlamaForCausalLM",)
    gguf_arch = "LLAMA"  # gguf-py MODEL_ARCH member
    gguf_permute_qk = True  # llama.cpp interleaves q/k rows for this architecture
    # Checkpoint module names that differ between families.
    fused_qkv = False  # one qkv_proj instead of q_proj, k_proj, v_proj (Phi-3)
    fused_gate_up = False  # one gate_up_proj instead of gate_proj, up_proj (Phi-3)
    moe_block = "mlp"  # the layer's sparse-MLP module
    expert_names = ("gate_proj", "up_proj", "down_proj")  # one expert's gate, up, down linears

    @classmethod
    def spec(cls, config: dict) -> ModelSpec:
        try:
            spec = ModelSpec(**cls.fields(config))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"config.json is missing or has a bad value for {e}") from None
        if spec.num_heads % spec.num_kv_heads:
            raise ModelError(f"{spec.num_heads} attention heads do not divide into {spec.num_kv_heads} KV heads")
        if spec.activation not in ACTIVATIONS:
            raise ModelError(f"unsupported activation '{spec.activation}'")
        if spec.layer_types and len(spec.layer_types) != spec.num_layers:
            raise ModelError(f"layer_types has {len(spec.layer_types)} entries for {spec.num_layers} layers")
        return spec

    @classmethod
    def fields(cls, config: dict) -> dict:
        """config.json -> ModelSpec keyword arguments; families extend the dict."""
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        act = config.get("hidden_act") or config.get("hidden_activation") or "silu"
        if act not in _ACTIVATIONS:
            raise ModelError(f"unsupported activation '{act}'")
        archs = config.get("architectures") or [cls.architectures[0]]
        return dict(
            family=cls.name,
            architecture=next((a for a in archs if a in cls.architectures), cls.architectures[0]),
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            max_position_embeddings=int(config.get("max_position_embeddings", 4096)),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope=rope_from_config(config),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=bool(config.get("attention_bias", False)),
            o_bias=bool(config.get("attention_bias", False)),
            mlp_bias=bool(config.get("mlp_bias", False)),
            activation=_ACTIVATIONS[act],
            bos_token_id=config.get("bos_token_id"),
            eos_token_ids=_as_tuple(config.get("eos_token_id")),
            name=str(config.get("_name_or_path", "")),
        )

    @classmethod
    def hf_config(cls, spec: ModelSpec) -> dict:
        """The config.json transformers reads back into the same model (`models export`)."""
        config = {
            "architectures": [spec.hf_architecture],
            "model_type": cls.model_type,
            "vocab_size": spec.vocab_size,
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.num_layers,
            "num_attention_heads": spec.num_heads,
            "num_key_value_heads": spec.num_kv_heads,
            "head_dim": spec.head_dim,
            "hidden_act": "silu" if spec.activation == "silu" else "gelu_pytorch_tanh",
            "max_position_embeddings": spec.max_position_embeddings,
            "rms_norm_eps": spec.rms_norm_eps,
            "rope_theta": spec.rope.theta,
            "rope_scaling": rope_scaling_dict(spec.rope),
            "tie_word_embeddings": spec.tie_word_embeddings,
            "bos_token_id": spec.bos_token_id,
            "eos_token_id": spec.eos_token_ids[0] if len(spec.eos_token_ids) == 1 else list(spec.eos_token_ids),
        }
        config.update(cls.hf_extra(spec))
        return config

    @classmethod
    def hf_extra(cls, spec: ModelSpec) -> dict:
        return {"attention_bias": spec.qkv_bias, "mlp_bias": spec.mlp_bias}


def _as_tuple(value) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def layer_types_from_config(config: dict, num_layers: int) -> tuple[str, ...]:
    """transformers 5 writes `layer_types`; otherwise none (every layer alike)."""
    types = tuple(config.get("layer_types") or ())
    if types and any(t not in (FULL, SLIDING) for t in types):
        raise ModelError(f"unsupported layer types {sorted(set(types) - {FULL, SLIDING})}")
    return types


def rope_params(config: dict, layer_type: str | None = None) -> dict:
    # transformers 5 writes `rope_parameters` (theta inside; per layer type for Gemma 3); older
    # configs write `rope_theta` and `rope_scaling` side by side. Accept both.
    params = dict(config.get("rope_parameters") or {})
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = dict(params[layer_type])
    elif any(isinstance(v, dict) for v in params.values()):
        params = dict(params.get(FULL) or {})
    scaling = config.get("rope_scaling") or {}
    return {**scaling, **params}


def rope_from_config(config: dict, layer_type: str | None = None, theta: float | None = None) -> RopeSpec:
    params = rope_params(config, layer_type)
    if theta is None:
        theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    if kind not in ROPE_KINDS:
        raise ModelError(f"unsupported rope scaling '{kind}': supported are {', '.join(ROPE_KINDS)}")
    partial = float(params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
    rope = RopeSpec(
        theta=theta,
        kind=kind,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position=int(
            params.get("original_max_position_embeddings")
            or config.get("original_max_position_embeddings")
            or 8192
        ),
        partial_rotary_factor=partial,
    )
    if kind == "longrope":
        rope = _longrope(rope, params, config)
    return rope


def _longrope(rope: RopeSpec, params: dict, config: dict) -> RopeSpec:
    from dataclasses import replace
    import math

    max_pos = int(config.get("max_position_embeddings", 4096))
    original = config.get("original_max_position_embeddings") or params.get("original_max_position_embeddings")
    original = int(original or max_pos)
    factor = float(params.get("factor") or max_pos / original)
    attention = params.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return replace(
        rope,
        original_max_position=original,
        factor=factor,
        short_factor=tuple(float(x) for x in params["short_factor"]),
        long_factor=tuple(float(x) for x in params["long_factor"]),
        attention_factor=float(attention),
    )


def rope_scaling_dict(rope: RopeSpec) -> dict | None:
    if rope.freq_factors is not None:
        raise ModelError("this model stores Llama-3 rope scaling as raw frequency factors; cannot export it")
    if rope.kind == "default":
        return None
    if rope.kind == "linear":
        return {"rope_type": "linear", "factor": rope.factor}
    if rope.kind == "longrope":
        return {
            "rope_type": "longrope",
            "short_factor": list(rope.short_factor or ()),
            "long_factor": list(rope.long_factor or ()),
            "original_max_position_embeddings": rope.original_max_position,
        }
    return {
        "rope_type": "llama3",
        "factor": rope.factor,
        "low_freq_factor": rope.low_freq_factor,
        "high_freq_factor": rope.high_freq_factor,
        "original_max_position_embeddings": rope.original_max_position,
    }
