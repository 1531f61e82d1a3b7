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


# --- Linear weights, KV bytes and FLOPs: what memory, bandwidth and compute planning read ---


def attention_linear_params(spec: ModelSpec) -> int:
    """One layer's q, k, v and o projection weights (no biases, no norms)."""
    return 2 * spec.hidden_size * spec.q_size + 2 * spec.hidden_size * spec.kv_size


def expert_params(spec: ModelSpec) -> int:
    """One gated MLP's weights (gate, up, down): an expert's for an MoE, the dense MLP's otherwise."""
    inter = spec.moe.intermediate_size if spec.moe else spec.intermediate_size
    return 3 * spec.hidden_size * inter


def num_experts(spec: ModelSpec) -> int:
    return spec.moe.num_experts if spec.moe else 1


def experts_per_token(spec: ModelSpec) -> int:
    return spec.moe.top_k if spec.moe else 1


def linear_params(spec: ModelSpec, active: bool = False) -> int:
    """The transformer blocks' matmul weights (attention projections and MLPs, every expert, or
    with `active` only the top_k experts one token runs): what weight quantization covers.
    Embeddings, lm_head, norms, biases and the MoE router are not in it."""
    experts = experts_per_token(spec) if active else num_experts(spec)
    return spec.num_layers * (attention_linear_params(spec) + experts * expert_params(spec))


def embedding_params(spec: ModelSpec) -> int:
    """The input embedding table plus lm_head (once when tied)."""
    return spec.vocab_size * spec.hidden_size * (1 if spec.tie_word_embeddings else 2)


def router_params(spec: ModelSpec) -> int:
    return spec.num_layers * spec.hidden_size * spec.moe.num_experts if spec.moe else 0


def matmul_params(spec: ModelSpec) -> int:
    """Weights one token multiplies through: the blocks' active linears, the router and lm_head
    (the input embedding is a lookup, not a matmul)."""
    return linear_params(spec, active=True) + router_params(spec) + spec.vocab_size * spec.hidden_size


def kv_bytes_per_layer(spec: ModelSpec, bytes_per_element: float, kv_heads: int | None = None) -> float:
    """K and V of one layer for one token (`kv_heads` overrides the model's: one GPU's share)."""
    heads = spec.num_kv_heads if kv_heads is None else kv_heads
    return 2 * heads * spec.head_dim * bytes_per_element


def kv_bytes_per_token(
    spec: ModelSpec, bytes_per_element: float, context: int | None = None, kv_heads: int | None = None
) -> float:
    """K and V held per token, summed over layers. Without `context` every layer holds every
    token (what a cache that gives each layer full-length blocks needs). With `context`, the
    per-token average over a `context`-long sequence: a layer with window W holds only
    min(W, context) tokens, so it counts min(W, context) / context of a full layer. Gemma 3
    (5 of 6 layers on a 1024 window) and Mistral-7B-v0.1 (4096 window everywhere) hold far less
    at long context than the layer count says."""
    per_layer = kv_bytes_per_layer(spec, bytes_per_element, kv_heads)
    if context is None:
        return spec.num_layers * per_layer
    return per_layer * sum(n * (min(w, context) if w else context) for w, n in spec.window_counts) / context


def kv_cached_bytes(
    spec: ModelSpec, bytes_per_element: float, context: int, kv_heads: int | None = None
) -> float:
    """K and V one sequence of `context` tokens holds (and one decode step reads): windowed
    layers keep only their last W tokens."""
    per_layer = kv_bytes_per_layer(spec, bytes_per_element, kv_heads)
    return per_layer * sum(n * (min(w, context) if w else context) for w, n in spec.window_counts)


def attended_keys(window: int | None, cached: int, new: int) -> float:
    """Keys `new` queries at positions cached .. cached+new-1 attend to, causally, within
    `window` (None: all earlier positions): the query at position p sees min(W, p + 1) keys."""
    a, b = cached + 1, cached + new  # sum of min(W, j) for j in [a, b]
    if window is None or window >= b:
        return (a + b) * new / 2
    low = min(b, window)
    inside = (a + low) * (low - a + 1) / 2 if low >= a else 0
    return inside + window * (b - max(a - 1, window))


def attention_flops(spec: ModelSpec, cached: int, new: int, heads: int | None = None) -> float:
    """FLOPs of QK^T and PV for `new` tokens after `cached` ones, every layer with its window:
    2 x 2 x heads x head_dim per (query, key) pair."""
    heads = spec.num_heads if heads is None else heads
    pairs = sum(n * attended_keys(w, cached, new) for w, n in spec.window_counts)
    return 4 * heads * spec.head_dim * pairs


def flops_per_token(spec: ModelSpec, context: int = 0) -> float:
    """Forward FLOPs of one token with `context` tokens before it: 2 x matmul_params (the
    active linears: an MoE counts its top_k experts; router and lm_head included) plus
    attention's context-dependent part (windowed layers attend to at most W keys)."""
    return 2 * matmul_params(spec) + attention_flops(spec, context, 1)


def expected_experts_hit(spec: ModelSpec, num_tokens: int) -> float:
    """Distinct experts per layer `num_tokens` tokens route to, on average, assuming uniform
    independent top-k routing: each expert is missed by one token with probability 1 - k/E,
    so E x (1 - (1 - k/E)^B) are hit (k for one token, E for many). 1 for a dense model."""
    if spec.moe is None:
        return 1.0
    e, k = spec.moe.num_experts, spec.moe.top_k
    return e * (1 - (1 - k / e) ** num_tokens)
