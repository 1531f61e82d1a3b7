"""Our forward pass against transformers on tiny random Llama, Mistral and Qwen2 models (fp32)."""

import torch

from llmtool.core.models.context import PrefillContext
from llmtool.core.models.generate import greedy_generate
from llmtool.core.models.loader import load_model

from .conftest import hf_greedy

SEQ_LEN = 40  # longer than the Mistral case's sliding window (16), so the window matters


def _ours(path):
    return load_model(str(path), dtype="fp32", device="cpu", with_tokenizer=False)


def test_logits_match_transformers(tiny_model):
    name, path, hf = tiny_model
    ours = _ours(path)
    torch.manual_seed(1)
    ids = torch.randint(3, ours.spec.vocab_size, (SEQ_LEN,))
    with torch.no_grad():
        expected = hf(ids[None]).logits[0].float()  # [T, V]
        hidden = ours.model(ids, torch.arange(SEQ_LEN), PrefillContext([SEQ_LEN], ours.spec))
        got = ours.model.compute_logits(hidden)
    diff = (got - expected).abs().max().item()
    assert diff <= 1e-4, f"{name}: max |logits - HF logits| = {diff:.2e}"


def test_packed_sequences_match_one_at_a_time(tiny_model):
    """Varlen packing must not leak attention across sequences."""
    _, path, _ = tiny_model
    ours = _ours(path)
    torch.manual_seed(2)
    lens = [7, 1, SEQ_LEN]
    seqs = [torch.randint(3, ours.spec.vocab_size, (n,)) for n in lens]
    with torch.no_grad():
        packed = ours.model(
            torch.cat(seqs), torch.cat([torch.arange(n) for n in lens]), PrefillContext(lens, ours.spec)
        )
        alone = [ours.model(s, torch.arange(len(s)), PrefillContext([len(s)], ours.spec)) for s in seqs]
    assert (packed - torch.cat(alone)).abs().max().item() <= 1e-5


def test_greedy_continuation_matches_transformers(tiny_model):
    name, path, hf = tiny_model
    ours = _ours(path)
    torch.manual_seed(3)
    prompt = torch.randint(3, ours.spec.vocab_size, (12,))
    hf_out = hf_greedy(hf, prompt.tolist(), 32)
    got = greedy_generate(ours.model, prompt.tolist(), 32)
    assert len(hf_out) == 32
    assert got == hf_out, f"{name}: greedy continuations differ"
