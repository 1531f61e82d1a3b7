"""ModelSpec: one model's shape and block recipe, read from an HF config (or GGUF metadata).

Only what the forward pass, the KV cache, the counters and the planners need; not a full HF
config. A family description (core/models/families/) turns a config.json into a ModelSpec;
everything else (the forward, quantize, convert-gguf, inspect, plan-capacity) reads the spec.
"""

from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

ROPE_KINDS = ("default", "linear", "llama3", "longrope")
BLOCKS = ("pre", "sandwich", "post")  # where a layer's norms sit, see layers/decoder.py
ACTIVATIONS = ("silu", "gelu_tanh")
FULL, SLIDING = "full_attention", "sliding_attention"  # HF's layer_types values


@dataclass(frozen=True)
class RopeSpec:
    theta: float = 10000.0
    kind: str = "default"  # one of ROPE_KINDS
    factor: float = 1.0  # linear and llama3 scaling factor
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_position: int = 8192  # llama3 and longrope
    # Per-frequency divisors as GGUF stores Llama-3 scaling (`rope_freqs`); overrides `kind`.
    freq_factors: tuple[float, ...] | None = None
    # longrope (Phi-3): per-frequency divisors below / from original_max_position on, and the
    # factor cos and sin are multiplied by.
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None
    attention_factor: float = 1.0
    partial_rotary_factor: float = 1.0  # the share of head_dim that rotates (Phi-4-mini: 0.75)


@dataclass(frozen=True)
class MoESpec:
    """A sparse MLP: a softmax router picks top_k of num_experts gated MLPs per token."""

    num_experts: int
    top_k: int
    intermediate_size: int  # of one expert
    renormalize: bool  # top-k weights rescaled to sum to 1 (Mixtral always, Qwen3-MoE norm_topk_prob)


@dataclass(frozen=True)
class LayerAttention:
    """What one layer's attention needs beyond the shared shape."""

    window: int | None  # keys this many positions or more behind the query are not attended
    rope: RopeSpec
    scale: float
    softcap: float | None  # scores -> softcap * tanh(scores / softcap) before softmax (Gemma 2)


@dataclass(frozen=True)
class ModelSpec:
    family: str  # the registry's family name ("llama", "qwen3", "gemma2", ...)
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope: RopeSpec = field(default_factory=RopeSpec)  # full-attention layers' rotary
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2, and Llama with attention_bias
    o_bias: bool = False  # Llama with attention_bias only
    mlp_bias: bool = False
    sliding_window: int | None = None  # the window of the layers `layer_types` marks sliding
    # Per layer FULL or SLIDING; empty: every layer SLIDING when sliding_window is set (Mistral),
    # else FULL.
    layer_types: tuple[str, ...] = ()
    local_rope: RopeSpec | None = None  # sliding layers' rotary when it differs (Gemma 3)
    attn_scale: float | None = None  # None: head_dim ** -0.5
    attn_softcap: float | None = None  # Gemma 2
    final_softcap: float | None = None  # logits -> c * tanh(logits / c) (Gemma 2)
    logit_scale: float = 1.0  # logits multiplied by it (Granite: 1 / logits_scaling)
    embed_scale: float = 1.0  # embeddings multiplied by it (Gemma: sqrt(hidden), Granite)
    residual_scale: float = 1.0  # each block's output multiplied before the residual add (Granite)
    qk_norm: str | None = None  # RMSNorm on q and k: "head" (per head: Qwen3, Gemma 3), "full" (OLMo 2)
    norm_offset: float = 0.0  # norms scale by (offset + weight) (Gemma: 1)
    block: str = "pre"  # one of BLOCKS
    activation: str = "silu"  # one of ACTIVATIONS
    moe: MoESpec | None = None  # every layer's MLP is sparse when set
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    name: str = ""
    architecture: str = ""  # the HF `architectures` name the spec was read as

    @property
    def hf_architecture(self) -> str:
        from .registry import family

        return self.architecture or family(self.family).architectures[0]

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def layer_type(self, layer_idx: int) -> str:
        if self.layer_types:
            return self.layer_types[layer_idx]
        return SLIDING if self.sliding_window is not None else FULL

    def layer_attention(self, layer_idx: int) -> LayerAttention:
        sliding = self.layer_type(layer_idx) == SLIDING
        return LayerAttention(
            window=self.sliding_window if sliding else None,
            rope=(self.local_rope or self.rope) if sliding else self.rope,
            scale=self.attn_scale if self.attn_scale is not None else self.head_dim**-0.5,
            softcap=self.attn_softcap,
        )

    @cached_property
    def windows(self) -> tuple[int | None, ...]:
        """Each layer's attention window (None: full). Cached: planners read it per step."""
        return tuple(self.layer_attention(i).window for i in range(self.num_layers))

    @cached_property
    def window_counts(self) -> tuple[tuple[int | None, int], ...]:
        """(window, number of layers with it): what sums over layers need, a term per window."""
        return tuple(Counter(self.windows).items())

    @property
    def mlp_intermediate_size(self) -> int:
        """The width one token's MLP computes through: top_k experts' for an MoE."""
        return self.moe.top_k * self.moe.intermediate_size if self.moe else self.intermediate_size

    def dims(self) -> dict[str, int | bool]:
        """The transformer's shape, by field name: what summaries of a model (inspect's,
        capacity planning's) copy from the spec."""
        names = ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim",
                 "vocab_size", "tie_word_embeddings")  # fmt: skip
        return {n: getattr(self, n) for n in names}

    def kv_bytes_per_token(self, bytes_per_element: int, context: int | None = None) -> int:
        """K and V of every layer for one token: 2 x layers x kv_heads x head_dim x bytes
        (GQA-aware). With `context`, windowed layers count only their share: a layer with
        window W holds min(W, context) tokens, so per token of a `context`-long sequence it
        costs min(W, context) / context of a full layer's (rounded up)."""
        per_layer = 2 * self.kv_size * bytes_per_element
        if context is None:
            return self.num_layers * per_layer
        total = sum(n * per_layer * (min(w, context) if w else context) for w, n in self.window_counts)
        return -(-total // context)

    @property
    def num_params(self) -> int:
        from .counts import count_params

        return count_params(self)


def spec_from_hf_config(config: dict) -> ModelSpec:
    """Build a ModelSpec from a config.json dict; unsupported models raise ModelError."""
    from .registry import family_for_config

    return family_for_config(config).spec(config)


def hf_config_from_spec(spec: ModelSpec) -> dict:
    """The config.json transformers reads back into the same model (used by `models export`)."""
    from .registry import family

    return family(spec.family).hf_config(spec)
