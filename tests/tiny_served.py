"""A tiny random Llama with a byte-level BPE tokenizer and a chat template, saved as an HF
directory that `llmtool serve` loads in a second: the server tests that compare against
transformers (prompt logprobs, logit_bias) run on it."""

import json
from pathlib import Path

import torch

from .conftest import _save_tiny

TEXT = (
    "the quick brown fox jumps over the lazy dog. a cat sat on the mat and looked at the moon. "
    "to be or not to be, that is the question: whether tis nobler in the mind to suffer. "
)
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_tiny_served(path: Path):
    """Tokenizer files and a random 2-layer Llama whose vocabulary is the tokenizer's; returns
    the transformers model (fp32, eval)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([TEXT] * 10, trainer)
    tok.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|im_end|>",
        "chat_template": CHATML,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return _save_tiny(path, "llama", vocab_size=tok.get_vocab_size(), eos_token_id=2, bos_token_id=1)


def hf_logprobs(hf, ids: list[int]) -> torch.Tensor:
    """transformers' fp32 log_softmax at every position [T, V] (row i scores token i + 1)."""
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
