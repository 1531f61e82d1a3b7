"""convert-gguf on tiny random models (fast) and its per-tensor plan against llama.cpp's rules.

The real-model and llama.cpp checks are in test_convert_gguf_real.py.
"""

import json

import gguf
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from llmtool.cli.main import app
from llmtool.core.errors import ModelError, UsageError
from llmtool.core.gguf.plan import OUT_TYPES, parse_out_type, plan_conversion
from llmtool.core.gguf.reader import GGUFFile
from llmtool.core.gguf.writer import convert_to_gguf
from llmtool.core.models.gguf_source import permute_rows
from llmtool.core.models.loader import load_model
from llmtool.core.models.rope import inv_frequencies
from llmtool.core.models.spec import spec_from_hf_config

SMOLLM2 = dict(
    architectures=["LlamaForCausalLM"], vocab_size=49152, hidden_size=576, intermediate_size=1536,
    num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
)  # fmt: skip
LLAMA2_7B = dict(
    architectures=["LlamaForCausalLM"], vocab_size=32000, hidden_size=4096, intermediate_size=11008,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
)  # fmt: skip
TEXTS = ["Hello world!", "The year 2024 had 366 days.", "  spaces\tand\nnewlines  ", "naïve café"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _types(spec_dict: dict, out_type: str) -> dict[str, str]:
    plan = plan_conversion(spec_from_hf_config(spec_dict), parse_out_type(out_type))
    return {t.name: t.ggml_type for t in plan.tensors}


def _layers(types: dict, kind: str, ggml_type: str) -> list[int]:
    return sorted(
        int(n.split(".")[1]) for n, t in types.items() if n.endswith(f".{kind}.weight") and t == ggml_type
    )


def test_unknown_type_names_the_valid_ones():
    with pytest.raises(UsageError, match="q4_k_m") as e:
        parse_out_type("q7_z")
    assert "f16" in str(e.value) and "q5_1" in str(e.value)


def test_plan_llama2_7b_follows_llama_cpp_mixes():
    t = _types(LLAMA2_7B, "q4_k_m")
    more_bits = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]  # use_more_bits(i, 32)
    assert _layers(t, "attn_v", "Q6_K") == more_bits and _layers(t, "ffn_down", "Q6_K") == more_bits
    assert t["output.weight"] == "Q6_K" and t["token_embd.weight"] == "Q4_K"
    assert t["blk.5.attn_q.weight"] == "Q4_K" and t["blk.0.attn_norm.weight"] == "F32"
    t = _types(LLAMA2_7B, "q3_k_m")
    assert _layers(t, "attn_v", "Q5_K") == [0, 1] and _layers(t, "ffn_down", "Q5_K") == [0, 1]
    assert t["blk.7.attn_output.weight"] == "Q4_K" and t["blk.7.ffn_up.weight"] == "Q3_K"
    t = _types(LLAMA2_7B, "q4_k_s")
    assert _layers(t, "attn_v", "Q5_K") == [0, 1, 2, 3] and _layers(t, "ffn_down", "Q5_K") == [0, 1, 2, 3]
    t = _types(LLAMA2_7B, "q2_k")  # llama.cpp's Q2_K is a mix too
    assert {t["blk.3.attn_v.weight"], t["blk.3.ffn_down.weight"], t["blk.3.attn_output.weight"]} == {"Q3_K"}
    assert t["blk.3.attn_q.weight"] == "Q2_K"
    t = _types(LLAMA2_7B, "q4_k")  # pure: only the output rule
    assert {v for k, v in t.items() if k.endswith(".weight") and "norm" not in k} == {"Q4_K", "Q6_K"}
    assert _types(LLAMA2_7B, "q8_0")["output.weight"] == "Q8_0"
    assert _types(LLAMA2_7B, "f16")["output.weight"] == "F16"


def test_plan_smollm2_q4_k_m_falls_back_on_576_wide_rows():
    plan = plan_conversion(spec_from_hf_config(SMOLLM2), parse_out_type("q4_k_m"))
    t = {p.name: p for p in plan.tensors}
    assert "output.weight" not in t  # tied: llama.cpp reuses token_embd
    assert t["token_embd.weight"].ggml_type == "Q8_0"  # output rule, 576 % 256 != 0
    assert t["blk.4.attn_q.weight"].ggml_type == "Q5_0" and t["blk.4.attn_q.weight"].fallback_from == "Q4_K"
    assert t["blk.0.attn_v.weight"].ggml_type == "Q8_0" and t["blk.0.attn_v.weight"].fallback_from == "Q6_K"
    assert t["blk.4.attn_v.weight"].ggml_type == "Q5_0"
    assert t["blk.0.ffn_down.weight"].ggml_type == "Q6_K" and t["blk.4.ffn_down.weight"].ggml_type == "Q4_K"
    assert sum(p.fallback_from is not None for p in plan.tensors) == 30 * 6


# ---- tiny random models with a byte-level BPE tokenizer -------------------------------------


def _save_tokenizer(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS * 20 + ["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    tok.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>", "chat_template": CHATML,
    }  # fmt: skip
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return tok.get_vocab_size()


def _save_tiny(path, family="llama", **overrides):
    import transformers

    path.mkdir(parents=True, exist_ok=True)
    vocab = _save_tokenizer(path)
    base = dict(
        vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, initializer_range=0.15,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip
    base.update(overrides)
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[family]
    torch.manual_seed(0)
    model = model_cls(config_cls(**base)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2", tie_word_embeddings=True)


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_qwen2"])
def test_f32_round_trip_is_exact(which, request, tmp_path):
    src = request.getfixturevalue(which)
    out = tmp_path / "m.gguf"
    result = convert_to_gguf(str(src), out, "f32")
    assert out.stat().st_size == result.file_bytes
    hf, gg = load_model(str(src), dtype=torch.float32), load_model(str(out), dtype=torch.float32)
    assert (
        gg.spec.num_layers == hf.spec.num_layers
        and gg.spec.tie_word_embeddings == hf.spec.tie_word_embeddings
    )
    a, b = hf.model.state_dict(), gg.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name  # q/k permuted and back, bit for bit
    for text in TEXTS:  # the tokenizer rebuilt from our metadata tokenizes as the original
        assert gg.tokenizer.encode(text) == hf.tokenizer.encode(text)
    # transformers rebuilds a qwen2 model's tokenizer with Qwen2's own split regex: that is found
    expected = "qwen2" if which == "tiny_qwen2" else "gpt-2"
    assert (result.tokenizer_pre, result.pre_source) == (expected, "pre-tokenizer structure")


@pytest.mark.parametrize("out_type", sorted(OUT_TYPES))
def test_every_type_converts_and_loads(out_type, tiny_llama, tmp_path):
    out = tmp_path / f"{out_type}.gguf"
    result = convert_to_gguf(str(tiny_llama), out, out_type)
    assert out.stat().st_size == result.file_bytes
    file = GGUFFile(out)
    assert {t.name: t.type_name for t in file.tensors} == {t.name: t.ggml_type for t in result.plan.tensors}
    assert file.fields["general.file_type"] == int(OUT_TYPES[out_type].file_type)
    hf, gg = load_model(str(tiny_llama), dtype=torch.float32), load_model(str(out), dtype=torch.float32)
    b = gg.model.state_dict()
    # worst relative (Frobenius) error of a 2-D weight; measured here: q8_0 0.005, q6_k 0.018,
    # q5_k 0.036, q4_k 0.072, q4_0 0.087, q3_k 0.15, q2_k 0.30
    bound = {
        "f32": 1e-7,
        "f16": 1e-3,
        "bf16": 5e-3,
        "q8_0": 0.01,
        "q6": 0.03,
        "q5": 0.06,
        "q4": 0.12,
        "q3": 0.2,
    }
    limit = bound.get(out_type, bound.get(out_type[:2], 0.4))
    for name, w in hf.model.state_dict().items():
        err = float((b[name] - w).norm() / w.norm())
        assert err <= limit, (name, err)


@pytest.mark.parametrize("out_type", ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "bf16", "f16"])
def test_block_bytes_equal_gguf_py(out_type, tiny_llama, tmp_path):
    out = tmp_path / "m.gguf"
    convert_to_gguf(str(tiny_llama), out, out_type)
    hf = load_model(str(tiny_llama), dtype=torch.float32)
    state, spec = hf.model.state_dict(), hf.spec
    qtype = gguf.GGMLQuantizationType[out_type.upper()]
    hf_names = {p.name: p.hf_name for p in plan_conversion(spec, parse_out_type(out_type)).tensors}
    checked = 0
    for t in GGUFFile(out).tensors:
        if t.type_name != qtype.name:
            continue
        name = hf_names[t.name]
        w = state[name]
        if ".q_proj." in name:
            w = permute_rows(w, spec.num_heads)
        if ".k_proj." in name:
            w = permute_rows(w, spec.num_kv_heads)
        expected = gguf.quants.quantize(w.numpy(), qtype)
        assert np.array_equal(np.asarray(t.data), expected.reshape(-1).view(np.uint8)), t.name
        checked += 1
    assert checked >= 14


def test_metadata_types_and_tokenizer(tiny_llama, tmp_path):
    out = tmp_path / "m.gguf"
    convert_to_gguf(str(tiny_llama), out, "q8_0")
    r = gguf.GGUFReader(out)
    V = gguf.GGUFValueType
    f = r.fields
    for key, vtype in {
        "llama.block_count": V.UINT32, "llama.context_length": V.UINT32, "llama.attention.head_count_kv": V.UINT32,
        "llama.rope.freq_base": V.FLOAT32, "llama.attention.layer_norm_rms_epsilon": V.FLOAT32,
        "general.file_type": V.UINT32, "general.quantization_version": V.UINT32,
        "tokenizer.ggml.bos_token_id": V.UINT32, "tokenizer.ggml.add_bos_token": V.BOOL,
        "tokenizer.ggml.tokens": V.ARRAY, "tokenizer.ggml.token_type": V.ARRAY, "tokenizer.chat_template": V.STRING,
    }.items():  # fmt: skip
        assert f[key].types[0] == vtype, key
    assert f["tokenizer.ggml.token_type"].types[1] == V.INT32
    fields = GGUFFile(out).fields
    tokenizer = json.loads((tiny_llama / "tokenizer.json").read_text())
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert len(fields["tokenizer.ggml.merges"]) == len(tokenizer["model"]["merges"])
    assert fields["tokenizer.ggml.token_type"][:3] == [3, 3, 3]  # the special tokens are CONTROL
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert fields["tokenizer.ggml.add_bos_token"] is False and fields["tokenizer.chat_template"] == CHATML
    assert fields["general.quantization_version"] == 2 and fields["llama.rope.dimension_count"] == 64
    assert "llama.attention.key_length" not in fields  # head_dim is hidden / heads


def test_dry_run_predicts_the_size_and_writes_nothing(tiny_llama, tmp_path):
    out = tmp_path / "m.gguf"
    dry = convert_to_gguf(str(tiny_llama), out, "q4_k_m", dry_run=True)
    assert not out.exists() and not list(tmp_path.iterdir())
    real = convert_to_gguf(str(tiny_llama), out, "q4_k_m")
    assert dry.file_bytes == real.file_bytes == out.stat().st_size


def test_llama3_rope_becomes_rope_freqs(tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
    src = _save_tiny(tmp_path / "src", rope_parameters=rope)
    convert_to_gguf(str(src), tmp_path / "m.gguf", "f32")
    hf, gg = (
        load_model(str(src), dtype=torch.float32),
        load_model(str(tmp_path / "m.gguf"), dtype=torch.float32),
    )
    assert gg.spec.rope.freq_factors is not None
    ours, theirs = inv_frequencies(gg.spec.rope, 64), inv_frequencies(hf.spec.rope, 64)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)


def test_gptq_checkpoint_is_dequantized(tiny_llama, tmp_path):
    from llmtool.core.quant.config import QuantConfig
    from llmtool.core.quant.pipeline import quantize_model
    from llmtool.kernels.quant_linear import QuantLinear

    quantize_model(
        str(tiny_llama), tmp_path / "gptq", QuantConfig("rtn", bits=4, group_size=64, eval_tokens=0)
    )
    convert_to_gguf(str(tmp_path / "gptq"), tmp_path / "m.gguf", "f32")
    q, gg = (
        load_model(str(tmp_path / "gptq"), dtype=torch.float32),
        load_model(str(tmp_path / "m.gguf"), dtype=torch.float32),
    )
    state = gg.model.state_dict()
    layers = [(n, m) for n, m in q.model.named_modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 14
    for name, module in layers:
        eye = torch.eye(module.in_features)
        weight = module(eye).T  # the layer's own product: W x for each unit vector
        torch.testing.assert_close(state[f"{name}.weight"], weight, rtol=1e-5, atol=1e-6)


def test_errors_are_one_line(tiny_llama, tmp_path):
    runner = CliRunner()
    out = tmp_path / "m.gguf"
    out.write_bytes(b"x")
    r = runner.invoke(app, ["convert-gguf", str(tiny_llama), "-o", str(out), "--type", "q4_k_m"])
    assert r.exit_code == 2 and "--force" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["convert-gguf", str(tiny_llama), "-o", str(out), "--type", "q9"])
    assert r.exit_code == 2 and "valid types are" in r.output
    bad = tmp_path / "gpt2"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ModelError, match="supported are .*LlamaForCausalLM.*Qwen3MoeForCausalLM"):
        convert_to_gguf(str(bad), tmp_path / "x.gguf", "f16")


def test_cli_dry_run_json_and_tables(tiny_llama, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["convert-gguf", str(tiny_llama), "--type", "q4_k_m", "--dry-run", "--json", "-"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["dry_run"] and data["type"] == "q4_k_m" and data["fallbacks"] == []
    assert {t["ggml_type"] for t in data["tensors"]} == {"F32", "Q4_K", "Q6_K"}
    r = runner.invoke(app, ["convert-gguf", str(tiny_llama), "--type", "q5_k_m", "--dry-run"])
    assert r.exit_code == 0 and "promoted" in r.output and "dry run" in r.output and "Q6_K" in r.output
    out = tmp_path / "m.gguf"
    r = runner.invoke(app, ["convert-gguf", str(tiny_llama), "-o", str(out), "--type", "q4_0"])
    assert r.exit_code == 0 and out.is_file() and "Q4_0" in r.output


def test_gguf_source_keeps_its_keys(tiny_llama, tmp_path):
    first = convert_to_gguf(str(tiny_llama), tmp_path / "a.gguf", "f32")
    second = convert_to_gguf(str(first.path), tmp_path / "b.gguf", "q8_0")
    a, b = GGUFFile(first.path).fields, GGUFFile(second.path).fields
    assert {k: v for k, v in a.items() if k != "general.file_type"} == {
        k: v for k, v in b.items() if k != "general.file_type"
    }
    assert second.pre_source == "copied from the source GGUF"
    gg = load_model(str(second.path), dtype=torch.float32)
    assert gg.tokenizer.encode(TEXTS[1]) == load_model(str(tiny_llama)).tokenizer.encode(TEXTS[1])


# ---- SentencePiece (Llama-2 / Mistral style) ------------------------------------------------

SPM_TEXTS = ["Hello world 2024", "naïve café ✅", "  two spaces\tand tab", "Sentence pieces."]


@pytest.fixture(scope="module")
def tiny_spm(tmp_path_factory):
    """A tiny llama with a SentencePiece BPE tokenizer.model (byte fallback, identity normalizer,
    as Llama-2's)."""
    import sentencepiece as spm
    import transformers

    path = tmp_path_factory.mktemp("tiny-spm")
    corpus = path / "corpus.txt"
    corpus.write_text(
        "\n".join((TEXTS + SPM_TEXTS + ["Sentence piece models split words into pieces."]) * 50)
    )
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(path / "tokenizer"), vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, split_digits=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2,
    )  # fmt: skip
    (path / "tokenizer.vocab").unlink()
    corpus.unlink()
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "add_bos_token": True, "legacy": False}  # fmt: skip
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    cfg = transformers.LlamaConfig(
        vocab_size=400, hidden_size=256, intermediate_size=512, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def test_sentencepiece_vocab(tiny_spm, tmp_path):
    import sentencepiece as spm

    result = convert_to_gguf(str(tiny_spm), tmp_path / "m.gguf", "f16")
    assert (result.tokenizer_pre, result.pre_source) == ("default", "SentencePiece")
    f = GGUFFile(result.path).fields
    sp = spm.SentencePieceProcessor(model_file=str(tiny_spm / "tokenizer.model"))
    assert f["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.merges" not in f
    assert f["tokenizer.ggml.tokens"] == [sp.id_to_piece(i) for i in range(400)]
    # added (special) tokens get score -1000 and type CONTROL, as in llama.cpp's converter
    assert np.allclose(f["tokenizer.ggml.scores"][3:], [sp.get_score(i) for i in range(3, 400)])
    assert f["tokenizer.ggml.token_type"][:4] == [3, 3, 3, 6]  # <unk> <s> </s>, then byte <0x00>
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.bos_token_id"] == 1
    ours = load_model(str(result.path)).tokenizer  # transformers rebuilds it from our metadata
    theirs = load_model(str(tiny_spm)).tokenizer
    assert all(ours.encode(t) == theirs.encode(t) for t in SPM_TEXTS)


@pytest.mark.peer
@pytest.mark.slow
def test_llama_cpp_tokenizes_sentencepiece_like_sentencepiece(tiny_spm, tmp_path):
    import os
    import re
    import subprocess

    import sentencepiece as spm

    from .peers import llama_cpp_binary

    binary = llama_cpp_binary("llama-tokenize")
    if not binary.is_file():
        pytest.skip("llama.cpp's llama-tokenize is not installed (make install-peers)")
    out = convert_to_gguf(str(tiny_spm), tmp_path / "m.gguf", "q8_0").path
    sp = spm.SentencePieceProcessor(model_file=str(tiny_spm / "tokenizer.model"))
    env = dict(os.environ, LD_LIBRARY_PATH=str(binary.parent))
    for text in SPM_TEXTS:
        args = [str(binary), "-m", str(out), "-p", text, "--ids", "--log-disable"]
        r = subprocess.run(
            args, capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL
        )
        ids = [int(x) for x in re.findall(r"\d+", r.stdout.strip().splitlines()[-1])]
        assert ids == [1, *sp.encode(text)], text
