"""A text prompt too long for the context, found without tokenizing it in full.

Tokenizing costs about 2 s per megabyte here, so a body of many megabytes held a worker (and
the client) for tens of seconds before the context-length check refused it. No token covers
more characters than the longest string in the vocabulary (special tokens included), so a
text of more than `max_model_len x longest` characters cannot fit, whatever its tokens:

- byte-level BPE (GPT-2, Llama 3, SmolLM2, Qwen): every byte of the text is in exactly one
  token, and a vocabulary string holds one character per byte;
- SentencePiece / Metaspace (Llama 2, Mistral): every character is in a token, a space being
  the one character "▁"; a byte-fallback token "<0xE2>" is longer than the byte it covers.

A normalizer may shorten the text first (NFC composes up to 4 code points into 1), so a text
over the limit is measured again after the tokenizer's own normalizer before it is refused.
The bound assumes the pre-tokenizer drops no characters, true of every family above (BERT's
whitespace splitting would not be). Never a false refusal for those; a text just under the
limit is tokenized in full, which bounds the work at `max_model_len x longest` characters.
"""

from .protocol import RequestError


def longest_token_chars(tokenizer) -> int:
    """The most characters one token of `tokenizer` can cover (>= 1)."""
    return max((len(token) for token in tokenizer.get_vocab()), default=1) or 1


def check_prompt_chars(tokenizer, text: str, max_chars: int, param: str) -> None:
    """RequestError (context_length_exceeded) when `text` cannot fit in `max_chars` // longest
    tokens. Runs in a worker thread for long texts: normalizing is linear but not free."""
    if max_chars <= 0 or len(text) <= max_chars:
        return
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    length = len(normalizer.normalize_str(text)) if normalizer is not None else len(text)
    if length > max_chars:
        raise RequestError(
            f"'{param}' has {len(text):,} characters, more than this model's maximum context "
            f"length can hold ({max_chars:,} characters at most, whatever the tokens): no room "
            "is left for a completion.",
            param,
            "context_length_exceeded",
        )
