"""A transformers tokenizer as GGUF tokenizer.ggml.* metadata, the way llama.cpp's
convert_hf_to_gguf.py writes it (get_vocab_base, _set_vocab_gpt2, _set_vocab_sentencepiece).

Byte-level BPE (SmolLM2, Llama-3, Qwen2) -> model "gpt2": tokens, token types, merges and the
pre-tokenizer name `pre`, chosen as llama.cpp does: the sha256 of the token ids of a fixed text
(`chkhsh`) looked up in a table of known tokenizers; an unknown hash falls back to reading the
pre-tokenizer's structure. SentencePiece (Llama-2, Mistral) -> model "llama": tokens, scores
and types from tokenizer.model, no merges. Special ids and the add-BOS/EOS flags are read off
the tokenizer's behaviour, so they match what transformers does. Not here: WordPiece, Unigram.
"""

import json
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

import gguf

TT = gguf.TokenType

# llama.cpp's text for chkhsh (convert_hf_to_gguf.py, get_vocab_base_pre), byte for byte.
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
    "✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
# chkhsh -> tokenizer.ggml.pre, from llama.cpp's table: the tokenizers a llama/qwen2 model can have.
PRE_BY_HASH = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama-3
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM, SmolLM2
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5/2/2.5
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral-Nemo
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}
# Split regexes of known pre-tokenizers (tokenizer.json), for tokenizers whose hash is unknown
# (e.g. a fine-tune that added tokens): the same regex means llama.cpp splits text the same way.
_LLAMA3_REGEX = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
_QWEN2_REGEX = _LLAMA3_REGEX.replace("\\p{N}{1,3}", "\\p{N}")
_PRE_BY_SPLIT = {_LLAMA3_REGEX: "llama-bpe", _QWEN2_REGEX: "qwen2"}


@dataclass(frozen=True)
class VocabMetadata:
    values: dict  # GGUF key -> gguf.gguf_writer.GGUFValue
    pre: str  # tokenizer.ggml.pre ("default" for SentencePiece)
    pre_source: str  # how pre was chosen: "hash", "pre-tokenizer structure", "unrecognised", ...
    warnings: tuple[str, ...] = ()


def vocab_metadata(
    tokenizer, vocab_size: int, model_dir: Path | None = None, config_ids: dict | None = None
) -> VocabMetadata:
    """tokenizer: a transformers tokenizer; model_dir: where tokenizer.model may be (SentencePiece);
    config_ids: config.json's {"bos": id, "eos": id}, used where the tokenizer names none (as
    llama.cpp's SpecialVocab does: Qwen2's tokenizer has no BOS, its config does)."""
    spm = model_dir / "tokenizer.model" if model_dir is not None else None
    if spm is not None and spm.is_file():
        result = _sentencepiece(tokenizer, vocab_size, spm)
    else:
        data = json.loads(tokenizer.backend_tokenizer.to_str())
        model = data.get("model", {})
        if model.get("type") == "BPE" and model.get("byte_fallback"):
            result = _spm_from_json(tokenizer, vocab_size, data)
        else:
            result = _byte_level_bpe(tokenizer, vocab_size, data)
    for kind, tid in (config_ids or {}).items():
        key = f"tokenizer.ggml.{kind}_token_id"
        if key not in result.values and isinstance(tid, int) and 0 <= tid < vocab_size:
            result.values[key] = _u32(tid)
    return result


def choose_pre(tokenizer, data: dict) -> tuple[str, str, tuple[str, ...]]:
    """(pre, how it was chosen, warnings) for a byte-level BPE tokenizer."""
    chkhsh = sha256(str(tokenizer.encode(CHKTXT)).encode()).hexdigest()
    if chkhsh in PRE_BY_HASH:
        return PRE_BY_HASH[chkhsh], "hash", ()
    pre = _pre_from_structure(data.get("pre_tokenizer") or {})
    if pre is not None:
        return pre, "pre-tokenizer structure", ()
    warning = (
        f"unrecognised BPE pre-tokenizer (chkhsh {chkhsh[:16]}...): wrote pre 'default'; "
        "llama.cpp will warn and may split text differently"
    )
    return "default", "unrecognised", (warning,)


def _pre_from_structure(pre: dict) -> str | None:
    items = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in items]
    if kinds == ["ByteLevel"] and items[0].get("use_regex", True):
        return "gpt-2"  # ByteLevel's own regex is GPT-2's, which is llama.cpp's "gpt-2"
    if (
        kinds == ["Digits", "ByteLevel"]
        and items[0].get("individual_digits")
        and items[1].get("use_regex", True)
    ):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not items[1].get("use_regex", True):
        return _PRE_BY_SPLIT.get((items[0].get("pattern") or {}).get("Regex"))
    return None


def _byte_level_bpe(tokenizer, vocab_size: int, data: dict) -> VocabMetadata:
    pre, how, warnings = choose_pre(tokenizer, data)
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(vocab_size):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(TT.UNUSED)
        elif i in added:
            # llama.cpp expects CONTROL / USER_DEFINED text pre-normalized (convert does the same)
            if not added[i].normalized:
                token = tokenizer.decode(tokenizer.encode(token, add_special_tokens=False))
            if added[i].special or _looks_special(token):
                types.append(TT.CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(TT.USER_DEFINED)
            tokens.append(token)
        else:
            tokens.append(token)
            types.append(TT.NORMAL)
    values = {
        "tokenizer.ggml.model": _str("gpt2"),
        "tokenizer.ggml.pre": _str(pre),
        "tokenizer.ggml.tokens": _arr(tokens, gguf.GGUFValueType.STRING),
        "tokenizer.ggml.token_type": _arr([int(t) for t in types], gguf.GGUFValueType.INT32),
        "tokenizer.ggml.merges": _arr(_merges(data), gguf.GGUFValueType.STRING),
    }
    byte_level = _byte_level(data.get("pre_tokenizer") or {})
    if byte_level is not None:  # llama.cpp's BPE default is no prefix space; say it either way
        values["tokenizer.ggml.add_space_prefix"] = _bool(byte_level.get("add_prefix_space", False))
    values |= special_metadata(tokenizer, vocab_size)
    return VocabMetadata(values, pre, how, warnings)


def _byte_level(pre: dict) -> dict | None:
    items = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return next((p for p in items if p.get("type") == "ByteLevel"), None)


def _merges(data: dict) -> list[str]:
    merges = data.get("model", {}).get("merges") or []
    if merges and not isinstance(merges[0], str):
        # tokenizers >= 0.20 stores pairs; GGUF keeps "a b" with a space inside a part as U+0120
        merges = [" ".join(part.replace(" ", "\u0120") for part in pair) for pair in merges]
    return merges


def _sentencepiece(tokenizer, vocab_size: int, path: Path) -> VocabMetadata:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(path))
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [TT.UNUSED] * vocab_size
    for i in range(min(sp.vocab_size(), vocab_size)):
        tokens[i], scores[i] = sp.IdToPiece(i), sp.GetScore(i)
        types[i] = (
            TT.UNKNOWN if sp.IsUnknown(i) else TT.CONTROL if sp.IsControl(i)
            else TT.UNUSED if sp.IsUnused(i) else TT.BYTE if sp.IsByte(i) else TT.NORMAL
        )  # fmt: skip
    _apply_added(tokenizer, tokens, scores, types)
    return _spm_metadata(tokenizer, vocab_size, tokens, scores, types)


def _spm_from_json(tokenizer, vocab_size: int, data: dict) -> VocabMetadata:
    # No tokenizer.model: a SentencePiece BPE exported to tokenizer.json keeps ids in merge
    # order, so -id ranks the pieces as their scores did (llama.cpp's converter writes -1000
    # for all, which makes its SentencePiece merges run left to right instead).
    reverse = {i: t for t, i in data["model"]["vocab"].items()}
    tokens = [reverse.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    scores = [-float(i) if i in reverse else -10000.0 for i in range(vocab_size)]
    types = [
        TT.BYTE if _is_byte(t) else TT.NORMAL if i in reverse else TT.UNUSED for i, t in enumerate(tokens)
    ]
    unk = data["model"].get("unk_token")
    for i, t in enumerate(tokens):
        if t == unk:
            types[i] = TT.UNKNOWN
    _apply_added(tokenizer, tokens, scores, types)
    return _spm_metadata(tokenizer, vocab_size, tokens, scores, types)


def _apply_added(tokenizer, tokens: list, scores: list, types: list) -> None:
    for i, added in tokenizer.added_tokens_decoder.items():
        if i >= len(tokens):
            continue
        token = added.content
        if added.special or _looks_special(token):
            types[i] = TT.CONTROL
        else:
            token = token.replace("\u2581", " ")
            types[i] = TT.USER_DEFINED
        tokens[i], scores[i] = token, -1000.0


def _spm_metadata(tokenizer, vocab_size: int, tokens, scores, types) -> VocabMetadata:
    values = {
        "tokenizer.ggml.model": _str("llama"),
        "tokenizer.ggml.pre": _str("default"),
        "tokenizer.ggml.tokens": _arr(tokens, gguf.GGUFValueType.STRING),
        "tokenizer.ggml.scores": _arr([float(s) for s in scores], gguf.GGUFValueType.FLOAT32),
        "tokenizer.ggml.token_type": _arr([int(t) for t in types], gguf.GGUFValueType.INT32),
    }
    values |= special_metadata(tokenizer, vocab_size)
    return VocabMetadata(values, "default", "SentencePiece")


def special_metadata(tokenizer, vocab_size: int) -> dict:
    """Special token ids, add-BOS/EOS flags (from what encode() does) and the chat template."""
    values = {}
    for kind in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
        tid = getattr(tokenizer, f"{kind}_token_id", None)
        if isinstance(tid, int) and 0 <= tid < vocab_size:
            key = "padding" if kind == "pad" else "unknown" if kind == "unk" else kind
            values[f"tokenizer.ggml.{key}_token_id"] = _u32(tid)
    with_special = tokenizer.encode("a", add_special_tokens=True)
    plain = tokenizer.encode("a", add_special_tokens=False)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos is not None and len(with_special) > len(plain) and with_special[0] == bos
    add_eos = eos is not None and len(with_special) > len(plain) and with_special[-1] == eos
    values["tokenizer.ggml.add_bos_token"] = _bool(add_bos)
    values["tokenizer.ggml.add_eos_token"] = _bool(add_eos)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: "default" is the main one
        for name, text in template.items():
            key = "tokenizer.chat_template" if name == "default" else f"tokenizer.chat_template.{name}"
            values[key] = _str(text)
    elif isinstance(template, str):
        values["tokenizer.chat_template"] = _str(template)
    return values


def _looks_special(token: str) -> bool:
    # llama.cpp's does_token_look_special: some models mark control tokens as not special
    return (
        token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (token.startswith("<|") and token.endswith("|>"))
        or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))
        or (token.startswith("<unused") and token.endswith(">"))
    )


def _is_byte(token: str) -> bool:
    return len(token) == 6 and token.startswith("<0x") and token.endswith(">")


def _str(v: str):
    return gguf.gguf_writer.GGUFValue(v, gguf.GGUFValueType.STRING)


def _u32(v: int):
    return gguf.gguf_writer.GGUFValue(int(v), gguf.GGUFValueType.UINT32)


def _bool(v: bool):
    return gguf.gguf_writer.GGUFValue(bool(v), gguf.GGUFValueType.BOOL)


def _arr(v: list, sub_type):
    return gguf.gguf_writer.GGUFValue(v, gguf.GGUFValueType.ARRAY, sub_type)
