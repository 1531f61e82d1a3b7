"""Counting a model from its spec: parameters (what `models inspect` and plan-capacity show).

Counts follow the modules layers/ builds from the same spec, so they equal transformers'
num_parameters() for every registered family (tests/test_architectures.py checks it).
"""

from .spec import ModelSpec


def attention_params(spec: ModelSpec) -> int:
    h = spec.hidden_size
    n = h * spec.q_size + 2 * h * spec.kv_size + spec.q_size * h
    n += (spec.q_size + 2 * spec.kv_size) * spec.qkv_bias + h * spec.o_bias
    if spec.qk_norm == "head":
        n += 2 * spec.head_dim
    elif spec.qk_norm == "full":
        n += spec.q_size + spec.kv_size
    return n


def mlp_params(spec: ModelSpec) -> int:
    h = spec.hidden_size
    if spec.moe is not None:
        i = spec.moe.intermediate_size
        return spec.moe.num_experts * 3 * h * i + spec.moe.num_experts * h  # experts + router
    i = spec.intermediate_size
    return 3 * h * i + (2 * i + h) * spec.mlp_bias


def norms_per_layer(spec: ModelSpec) -> int:
    return {"pre": 2, "sandwich": 4, "post": 2}[spec.block]


def layer_params(spec: ModelSpec) -> int:
    return attention_params(spec) + mlp_params(spec) + norms_per_layer(spec) * spec.hidden_size


def count_params(spec: ModelSpec) -> int:
    v, h = spec.vocab_size, spec.hidden_size
    head = 0 if spec.tie_word_embeddings else v * h
    return v * h + spec.num_layers * layer_params(spec) + h + head


def active_params(spec: ModelSpec) -> int:
    """Parameters one token's forward reads: an MoE reads top_k of its experts."""
    if spec.moe is None:
        return count_params(spec)
    idle = (spec.moe.num_experts - spec.moe.top_k) * 3 * spec.hidden_size * spec.moe.intermediate_size
    return count_params(spec) - spec.num_layers * idle
