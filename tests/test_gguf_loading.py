"""GGUF loading on tiny models written with gguf-py: metadata mapping, name mapping and
llama.cpp's q/k permutation (llama) or its absence (qwen2), checked against HF logits."""

import gguf
import numpy as np
import pytest
import torch

from llmtool.core.models.context import PrefillContext
from llmtool.core.models.gguf_source import permute_rows, unpermute_rows
from llmtool.core.models.loader import load_model

from .conftest import _save_tiny

HF_TO_GGUF = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _gguf_name(hf_name: str) -> str:
    stem, suffix = hf_name.rsplit(".", 1)
    if stem.startswith("model.layers."):
        _, _, idx, rest = stem.split(".", 3)
        return f"blk.{idx}.{HF_TO_GGUF[rest]}.{suffix}"
    return f"{HF_TO_GGUF[stem]}.{suffix}"


def _write_gguf(path, hf, arch: str) -> None:
    c = hf.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_vocab_size(c.vocab_size)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    state = hf.state_dict()
    if c.tie_word_embeddings:
        state.pop("lm_head.weight")
    for name, t in state.items():
        t = t.detach().float()
        if arch == "llama" and "q_proj" in name:
            t = permute_rows(t, c.num_attention_heads)
        elif arch == "llama" and "k_proj" in name:
            t = permute_rows(t, c.num_key_value_heads)
        # Half the matrices in F16 so the dequantizing path is used, not only raw F32.
        dtype = np.float16 if t.ndim == 2 and "mlp" in name else np.float32
        w.add_tensor(_gguf_name(name), t.numpy().astype(dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize(
    "family,overrides", [("llama", {}), ("qwen2", {"tie_word_embeddings": True})], ids=["llama", "qwen2"]
)
def test_gguf_logits_match_transformers(tmp_path, family, overrides):
    hf = _save_tiny(tmp_path / "hf", family, **overrides)
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, hf, family)
    ours = load_model(str(path), dtype="fp32", device="cpu", with_tokenizer=False)
    assert ours.spec.family == family
    assert ours.spec.num_kv_heads == hf.config.num_key_value_heads
    assert ours.spec.tie_word_embeddings == hf.config.tie_word_embeddings
    ids = torch.randint(3, hf.config.vocab_size, (24,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # HF in fp32 on weights rounded through F16 for the MLP, as the GGUF stores them.
        for name, p in hf.named_parameters():
            if p.ndim == 2 and "mlp" in name:
                p.copy_(p.half().float())
        expected = hf(ids[None]).logits[0]
        got = ours.model.compute_logits(ours.model(ids, torch.arange(24), PrefillContext([24], ours.spec)))
    assert (got - expected).abs().max().item() <= 1e-4


def test_unpermute_inverts_llama_cpp_permute():
    w = torch.randn(4 * 2 * 3, 5)  # 4 heads of head_dim 6
    assert torch.equal(unpermute_rows(permute_rows(w, 4), 4), w)
    assert not torch.equal(permute_rows(w, 4), w)
    b = torch.randn(24)  # biases are permuted like a one-column matrix
    assert torch.equal(unpermute_rows(permute_rows(b, 4), 4), b)


def test_end_of_turn_id_counts_as_eos(tmp_path):
    hf = _save_tiny(tmp_path / "hf", "llama")
    path = tmp_path / "eot.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    c = hf.config
    for add, value in (
        (w.add_context_length, c.max_position_embeddings),
        (w.add_embedding_length, c.hidden_size),
        (w.add_block_count, c.num_hidden_layers),
        (w.add_feed_forward_length, c.intermediate_size),
        (w.add_head_count, c.num_attention_heads),
        (w.add_head_count_kv, c.num_key_value_heads),
        (w.add_vocab_size, c.vocab_size),
        (w.add_eos_token_id, 2),
        (w.add_eot_token_id, 7),
    ):
        add(value)
    w.add_tensor("token_embd.weight", np.zeros((c.vocab_size, c.hidden_size), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    from llmtool.core.models.gguf_source import GGUFSource

    assert GGUFSource(path).spec().eos_token_ids == (2, 7)
