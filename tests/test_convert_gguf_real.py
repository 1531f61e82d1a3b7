"""convert-gguf on the default SmolLM2 model: every type converts and loads, f16/q8_0 generate
what the HF copy generates, metadata matches llama.cpp's own file; and, with llama.cpp itself
(`peer`), its quantizer picks the same per-tensor types. llama.cpp loading, tokenizing and
generating from our files is tests/test_convert_gguf_llama.py; the fixtures `reference`,
`smol_hf` and `converted` are in conftest.py, shared with it."""

import json
import os
import subprocess

import pytest
import torch

from llmtool.core.gguf.plan import OUT_TYPES
from llmtool.core.gguf.reader import GGUFFile
from llmtool.core.gguf.vocab import PRE_BY_HASH, choose_pre
from llmtool.core.gguf.writer import convert_to_gguf
from llmtool.core.models.aliases import DEFAULT_MODEL
from llmtool.core.models.generate import greedy_generate
from llmtool.core.models.loader import load_model

from .peers import llama_cpp_binary

pytestmark = [pytest.mark.real_model, pytest.mark.slow]
PROMPTS = ["What is the capital of France?", "Write a haiku about the sea."]
# Keys whose values legitimately differ from llama.cpp's file made from the original HF repo.
NAME_KEYS = {"general.name", "general.organization", "general.finetune", "general.basename", "general.size_label",
             "general.license", "general.languages", "general.type"}  # fmt: skip


@pytest.mark.parametrize("out_type", sorted(OUT_TYPES))
def test_every_type_converts_and_our_loader_reads_it(out_type, converted):
    path = converted(out_type)
    loaded = load_model(str(path), dtype=torch.float32)
    ids = loaded.tokenizer.encode(PROMPTS[0])
    assert len(greedy_generate(loaded.model, ids, 4)) == 4


@pytest.mark.parametrize("out_type", ["f16", "q8_0"])
def test_greedy_tokens_match_the_hf_copy(out_type, smol_hf, converted):
    hf = load_model(str(smol_hf), dtype=torch.float32)
    gg = load_model(str(converted(out_type)), dtype=torch.float32)
    for prompt in PROMPTS:
        chat = [{"role": "user", "content": prompt}]
        text = hf.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        ids = hf.tokenizer.encode(text, add_special_tokens=False)
        assert gg.tokenizer.encode(prompt) == hf.tokenizer.encode(prompt)
        assert greedy_generate(gg.model, ids, 16) == greedy_generate(hf.model, ids, 16), prompt


def test_metadata_matches_llama_cpp_file(reference, smol_hf, tmp_path):
    ref = GGUFFile(reference).fields
    # From the GGUF itself: every key and value of llama.cpp's file comes back.
    ours = GGUFFile(convert_to_gguf(DEFAULT_MODEL, tmp_path / "a.gguf", "q4_1").path).fields
    assert {k: v for k, v in ours.items() if k in ref} == ref
    assert set(ours) == set(ref)
    # From the HF export: the same but for the names a model card would give (the export has none).
    ours = GGUFFile(convert_to_gguf(str(smol_hf), tmp_path / "b.gguf", "q4_1").path).fields
    differ = {k for k in ref if ours.get(k) != ref[k]}
    assert differ <= NAME_KEYS, differ
    assert set(ours) - set(ref) == {"tokenizer.ggml.add_eos_token"}
    assert ours["tokenizer.ggml.pre"] == "smollm"  # by chkhsh, as llama.cpp's converter finds it


def test_pre_by_hash_and_by_structure(smol_hf):
    from tokenizers import Regex, pre_tokenizers
    from transformers import AutoTokenizer

    from llmtool.core.gguf.vocab import _LLAMA3_REGEX

    tok = AutoTokenizer.from_pretrained(str(smol_hf))
    # transformers' rebuild has plain ByteLevel, not SmolLM's digit split; with no multi-digit
    # tokens in the vocab it tokenizes the same, so the hash is SmolLM's
    assert choose_pre(tok, {})[:2] == ("smollm", "hash") and "smollm" in PRE_BY_HASH.values()
    split = pre_tokenizers.Split(Regex(_LLAMA3_REGEX), behavior="isolated")
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    data = json.loads(tok.backend_tokenizer.to_str())
    assert choose_pre(tok, data)[:2] == ("llama-bpe", "pre-tokenizer structure")


# ---- llama.cpp ----------------------------------------------------------------------------


def _run(tool: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    binary = llama_cpp_binary(tool)
    if not binary.is_file():
        pytest.skip(f"llama.cpp tool {tool} is not installed (make install-peers)")
    env = dict(os.environ, LD_LIBRARY_PATH=str(binary.parent))
    return subprocess.run(
        [str(binary), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.peer
@pytest.mark.parametrize("out_type", ["q4_k_m", "q3_k_m", "q4_k_s", "q5_k_m", "q2_k", "q6_k", "q4_0", "q8_0"])
def test_llama_quantize_picks_our_types_and_bytes(out_type, converted, tmp_path):
    """llama-quantize of our f32 file: the same type for every tensor and the same block bytes
    (K-quants included: kernels.ggml_kquants follows ggml's reference quantizers)."""
    ours = {t.name: t for t in GGUFFile(converted(out_type)).tensors}
    out = tmp_path / "lq.gguf"
    r = _run("llama-quantize", str(converted("f32")), str(out), out_type.upper(), "2")
    assert r.returncode == 0, r.stderr[-2000:]
    theirs = {t.name: t for t in GGUFFile(out).tensors}
    assert {n: t.type_name for n, t in ours.items()} == {n: t.type_name for n, t in theirs.items()}
    differ = [n for n, t in theirs.items() if bytes(t.data) != bytes(ours[n].data)]
    assert not differ, differ[:5]
    assert out.stat().st_size == converted(out_type).stat().st_size
