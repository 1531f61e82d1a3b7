"""Detokenizer on the default model's tokenizer: streamed deltas add up to tokenizer.decode,
no broken characters, stop strings across token boundaries, hold-back and flush."""

import pytest

from llmtool.core.engine.detokenizer import Detokenizer
from llmtool.core.engine.sampling_params import SamplingParams

pytestmark = pytest.mark.real_model

PROMPT = "Here is the text you asked for:"
TEXTS = [
    "The quick brown fox jumps over the lazy dog. It was 3.14 degrees!",
    "def add(a, b):\n    return a + b\n\n\tprint('done')  # trailing  spaces  ",
    "Café, naïve, résumé, Ångström, São Paulo, Łódź, œuvre.",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "Party 🎉👍🏽 family 👨‍👩‍👧 flags 🇫🇷🇯🇵 and math ∑∫√∞ ≠ ≤.",
    " leading space, then\n\nnew lines and an emoji at the end 🙂",
]


@pytest.fixture(scope="module")
def tok():
    from llmtool.core.models.aliases import ALIASES, alias_path
    from llmtool.core.models.tokenizer import load_tokenizer_gguf

    return load_tokenizer_gguf(alias_path(ALIASES["smollm2-135m"]))


def encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def stream(tok, ids: list[int], prompt: str = PROMPT, **params) -> tuple[list[str], Detokenizer]:
    """Push ids one at a time; the deltas (the flush last) and the detokenizer."""
    detok = Detokenizer(tok, encode(tok, prompt), SamplingParams(**params))
    deltas = [detok.push([t]).text for t in ids]
    return deltas + [detok.flush()], detok


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_deltas_add_up_to_decode_and_never_split_a_character(tok, text):
    ids = encode(tok, text)
    deltas, detok = stream(tok, ids)
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True) == text
    assert detok.text == text
    assert not any("\ufffd" in d for d in deltas), deltas
    # Several ids in one push (speculative decoding, a catch-up) give the same text.
    whole = Detokenizer(tok, encode(tok, PROMPT), SamplingParams())
    assert whole.push(ids).text + whole.flush() == text


def test_multibyte_tokens_are_held_until_the_character_completes(tok):
    ids = encode(tok, " 🎉")
    assert len(ids) > 1 and "\ufffd" in tok.decode(ids[:1])  # the emoji's bytes span tokens
    deltas, _ = stream(tok, ids)
    assert deltas[: len(ids) - 1] == [""] * (len(ids) - 1) and deltas[len(ids) - 1] == " 🎉"


def test_prompt_context_keeps_the_leading_space(tok):
    deltas, _ = stream(tok, encode(tok, " Paris."), prompt="The capital of France is")
    assert "".join(deltas) == " Paris."


def test_special_tokens_skipped_or_kept(tok):
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    ids = [im_start, *encode(tok, "Hello"), im_end, *encode(tok, " World")]
    skipped, _ = stream(tok, ids)
    assert "".join(skipped) == "Hello World"
    kept, _ = stream(tok, ids, skip_special_tokens=False)
    assert "".join(kept) == tok.decode(ids) == "<|im_start|>Hello<|im_end|> World"


def test_the_window_stays_small(tok):
    ids = encode(tok, " ".join(TEXTS) * 20)
    detok = Detokenizer(tok, encode(tok, PROMPT), SamplingParams())
    for t in ids:
        detok.push([t])
        assert len(detok._window) <= 8  # O(1) work per token, however long the output
    assert detok.text + detok.flush() == tok.decode(ids)


# ----------------------------------------------------------------------------- stop strings


@pytest.fixture(scope="module")
def split_world(tok) -> list[int]:
    """'Hello World! And more.' with ' Wor' and 'ld' as separate tokens."""
    ids = encode(tok, "Hello") + encode(tok, " Wor") + encode(tok, "ld! And more.")
    assert tok.decode(ids) == "Hello World! And more."
    assert not any("World" in tok.decode([t]) for t in ids)
    assert tok.decode(ids[1:2]) == " Wor" and tok.decode(ids[2:3]) == "ld"
    return ids


def test_stop_string_across_tokens(tok, split_world):
    detok = Detokenizer(tok, encode(tok, PROMPT), SamplingParams(stop=("World",)))
    deltas = [detok.push([t]) for t in split_world[:3]]
    assert [d.text for d in deltas] == ["Hello", " ", ""]  # "Wor" was held back, then cut
    assert [d.stop_hit for d in deltas] == [False, False, True]
    assert detok.text == "Hello "
    assert detok.push(split_world[3:4]).text == "" and detok.flush() == ""
    assert detok.text == "Hello "


def test_include_stop_str_in_output(tok, split_world):
    deltas, detok = stream(tok, split_world[:3], stop=("World",), include_stop_str_in_output=True)
    assert "".join(deltas) == detok.text == "Hello World" and detok.stop_hit


def test_held_back_text_is_released_by_flush(tok, split_world):
    detok = Detokenizer(tok, encode(tok, PROMPT), SamplingParams(stop=("World",)))
    assert [detok.push([t]).text for t in split_world[:2]] == ["Hello", " "]
    assert detok.flush() == "Wor"  # the sequence ended (length, EOS): "Wor" never became "World"
    assert detok.text == "Hello Wor" and not detok.stop_hit


def test_a_start_that_diverges_is_emitted(tok):
    deltas, detok = stream(tok, encode(tok, "Hello Wonderful Word Worlds"), stop=("World!",))
    assert "".join(deltas) == detok.text == "Hello Wonderful Word Worlds" and not detok.stop_hit


def test_stop_inside_one_token_and_the_earliest_of_several(tok):
    deltas, detok = stream(tok, encode(tok, "Hello there, general Kenobi"), stop=("ell",))
    assert "".join(deltas) == "H" and detok.stop_hit
    # "there, g" completes before "ral", both before "Kenobi".
    deltas, detok = stream(
        tok, encode(tok, "Hello there, general Kenobi"), stop=("Kenobi", "ral", "there, g")
    )
    assert "".join(deltas) == "Hello " and detok.stop_hit
    deltas, _ = stream(tok, encode(tok, "Hello there, general Kenobi"), stop=("Kenobi", "ral"))
    assert "".join(deltas) == "Hello there, gene"


def test_stop_string_with_multibyte_characters(tok):
    text = "Le café 🎉 est prêt. Encore du texte."
    deltas, detok = stream(tok, encode(tok, text), stop=("🎉 est",))
    assert "".join(deltas) == "Le café " and detok.stop_hit
    assert not any("\ufffd" in d for d in deltas)
