"""Tiny random checkpoints of every registered architecture family, built offline from
transformers' own config classes: the oracle for tests/test_architectures.py.

Adding a family: its file in core/models/families/ and one entry in TINY here; every check of
the suite then runs on it (test_every_family_has_a_tiny_config fails until the entry exists).
Shapes are small but real: GQA (4 query heads, 2 KV heads), head_dim 16, windows of 8 tokens
so a 40-token prompt crosses them, and for MoE 4 experts of which 2 run per token.
"""

import torch
import transformers

VOCAB = 512
WINDOW = 8

_BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    initializer_range=0.15,  # sharper logits than the default 0.02: no near-ties in argmax
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    tie_word_embeddings=False,
)

# family -> (transformers config class, overrides of _BASE)
TINY = {
    "llama": (transformers.LlamaConfig, dict(attention_bias=True)),
    "mistral": (transformers.MistralConfig, dict(sliding_window=WINDOW)),
    "qwen2": (transformers.Qwen2Config, dict(tie_word_embeddings=True)),
    "qwen3": (transformers.Qwen3Config, dict(num_hidden_layers=3)),
    "qwen3_moe": (
        transformers.Qwen3MoeConfig,
        dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True),
    ),
    "mixtral": (transformers.MixtralConfig, dict(num_local_experts=4, num_experts_per_tok=2, sliding_window=None)),
    "gemma2": (
        transformers.Gemma2Config,
        dict(num_hidden_layers=4, sliding_window=WINDOW, query_pre_attn_scalar=16, tie_word_embeddings=True,
             attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
    ),  # fmt: skip
    "gemma3": (
        transformers.Gemma3TextConfig,
        dict(num_hidden_layers=4, sliding_window=WINDOW, query_pre_attn_scalar=16, tie_word_embeddings=True,
             layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
             rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                              "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
    ),  # fmt: skip
    # LongRoPE's short factors (every test sequence stays under original_max_position_embeddings:
    # past it transformers recomputes the whole cache with the long factors, we rotate by
    # position, as vLLM does).
    "phi3": (
        transformers.Phi3Config,
        dict(max_position_embeddings=256, original_max_position_embeddings=96, partial_rotary_factor=0.75,
             rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                              "short_factor": [1.0, 1.1, 1.2, 1.5, 2.0, 3.0],
                              "long_factor": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]}),
    ),  # fmt: skip
    "granite": (
        transformers.GraniteConfig,
        dict(embedding_multiplier=6.0, attention_multiplier=0.1, residual_multiplier=0.5, logits_scaling=2.0),
    ),
    "olmo2": (transformers.Olmo2Config, {}),
}


def tiny_config(family: str) -> transformers.PretrainedConfig:
    config_cls, overrides = TINY[family]
    return config_cls(**{**_BASE, **overrides})


def save_tiny(path, family: str, seed: int = 0):
    """Build a tiny random `family` model, save it to `path`, return the HF model (fp32, eval)."""
    config = tiny_config(family)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Biases and norm weights default to 0 / 1: randomise them so those paths count.
            if name.endswith(".bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path, safe_serialization=True)
    return model


TEXT = (
    "the quick brown fox jumps over the lazy dog. a cat sat on the mat and looked at the moon. "
    "to be or not to be, that is the question: whether tis nobler in the mind to suffer. "
)


def save_tokenizer(path) -> None:
    """A word-level tokenizer of exactly VOCAB ids (0 unknown, 1 BOS, 2 EOS as in the tiny
    configs). Every id decodes to a whole word that encodes back to it (a byte-level BPE lets a
    random model emit unfinished UTF-8, which never streams as text; bench fits prompts by
    round trips)."""
    import json
    import re

    from tokenizers import Tokenizer, models, pre_tokenizers

    words = list(dict.fromkeys(re.findall(r"\w+|[^\w\s]", TEXT)))
    names = ["unk", "bos", "eos", *words]
    names += [f"w{i}" for i in range(VOCAB - len(names))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(names)}, unk_token="unk"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert tok.get_vocab_size() == VOCAB
    tok.save(str(path / "tokenizer.json"))
    # No token is special (skipped in decoded text); EOS comes from config.json's eos_token_id.
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
