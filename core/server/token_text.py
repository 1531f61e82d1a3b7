"""Token ids as the texts and bytes that logprobs report."""

import functools
from collections.abc import Callable


def token_texts(tokenizer) -> tuple[Callable[[int], str], Callable[[int], bytes]]:
    """Token id -> its text, and -> its exact bytes (a byte-level BPE token may hold part of a
    UTF-8 character, whose text alone would be U+FFFD)."""

    @functools.lru_cache(maxsize=65536)
    def text(token_id: int) -> str:
        return tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    # Byte-level BPE (GPT-2, Llama 3, SmolLM2) spells " the" as "Ġthe"; others keep their own pieces.
    pieces = tokenizer.convert_ids_to_tokens(tokenizer.encode(" the", add_special_tokens=False))
    byte_decoder = _byte_decoder() if "Ġ" in "".join(p for p in pieces if isinstance(p, str)) else {}

    @functools.lru_cache(maxsize=65536)
    def raw(token_id: int) -> bytes:
        piece = tokenizer.convert_ids_to_tokens(token_id)
        if byte_decoder and isinstance(piece, str) and all(ch in byte_decoder for ch in piece):
            return bytes(byte_decoder[ch] for ch in piece)
        return text(token_id).encode("utf-8")

    return text, raw


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: printable stand-in character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def prompt_logprobs_body(
    prompt_ids: list[int], logprobs: list, token_text: Callable[[int], str]
) -> list[dict | None]:
    """vLLM's `prompt_logprobs`: per prompt token None (the first: nothing scores it) or a map
    token id (a string, as JSON keys are) -> {"logprob", "rank", "decoded_token"}, the prompt's
    own token first, then its top-k alternatives (ranks 1..k)."""
    out: list[dict | None] = []
    for token_id, lp in zip(prompt_ids, logprobs, strict=True):
        if lp is None:
            out.append(None)
            continue
        entry = {str(token_id): _logprob_entry(lp.logprob, lp.rank, token_text(token_id))}
        for rank, (alt_id, value) in enumerate(lp.top, 1):
            entry.setdefault(str(alt_id), _logprob_entry(value, rank, token_text(alt_id)))
        out.append(entry)
    return out


def _logprob_entry(value: float, rank: int | None, text: str) -> dict:
    # JSON has no -Infinity or NaN: vLLM clamps to -9999.0, as OpenAI does.
    return {
        "logprob": -9999.0 if value != value else max(value, -9999.0),
        "rank": rank,
        "decoded_token": text,
    }
