"""FastTokenizer: a Hugging Face tokenizer directory served by `tokenizers` and `jinja2` alone.

Why: importing transformers costs about a second of GIL-bound time, and `llmtool serve` must
answer /health within seconds of starting; the Rust `tokenizers` package imports in ~50 ms.

It reproduces what transformers 5's AutoTokenizer builds for a directory whose tokenizer_config
names TokenizersBackend or PreTrainedTokenizerFast: the same edits to the Rust tokenizer at load
(added and special tokens re-added, the post-processor set when there is none) and the same
encode / decode / convert_ids_to_tokens / apply_chat_template. `from_dir` returns None for any
directory transformers would load another way (a model-specific class that rebuilds the backend,
remote code, legacy token files, Mistral formats): the caller then falls back to transformers.
Not here: pairs, batches of texts, padding, truncation, offsets, saving, tools given as Python
functions (pass JSON schemas), continue_final_message and assistant masks.
"""

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, processors

from .chat_template import render_chat_template

NAMED_SPECIAL_TOKENS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
# tokenizer_class values for which AutoTokenizer loads tokenizer.json as it is (TokenizersBackend).
_PLAIN_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
# Model types whose hub class transformers 5 replaces with its own tokenizer class, which rebuilds
# the backend (from its MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS, the ones not mapped to the backend).
_CLASS_OVERRIDDEN_MODEL_TYPES = {
    "hyperclovax_vision_v2",
    "qwen2",
    "qwen3_5",
    "qwen3_5_moe",
    "qwen3_5_moe_text",
    "qwen4_exp",
    "siglip2",
}
# Read only when tokenizer_config has no added_tokens_decoder (configs saved before transformers 4.34).
_LEGACY_FILES = ("special_tokens_map.json", "added_tokens.json")
# Names a message's reasoning may come under; transformers copies it to the first (and `thinking`).
# transformers' apply_chat_template options that FastTokenizer does not implement, with their defaults.
_UNSUPPORTED_CHAT_OPTIONS = {
    "continue_final_message": False,
    "sanitize_control_tokens": False,
    "padding": False,
    "truncation": False,
    "max_length": None,
    "return_tensors": None,
    "return_assistant_tokens_mask": False,
    "tokenizer_kwargs": None,
}


class FastTokenizer:
    """Drop-in for the transformers tokenizer of one directory. Special tokens read as attributes
    like transformers': `eos_token`, `eos_token_id`, ... and model-specific ones (`image_token`)."""

    def __init__(self, tokenizer: Tokenizer, special: dict, extra: list, options: dict, name_or_path: str):
        self._tokenizer = tokenizer
        self._special = special  # attribute name -> str | AddedToken | None, in transformers' order
        self._extra = extra  # extra_special_tokens: unnamed, still special
        self.clean_up_tokenization_spaces = options.get("clean_up_tokenization_spaces", False)
        # transformers 5 never cleans up BPE output unless this is set (cleanup eats real spaces there).
        self._clean_up_bpe = options.get(
            "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False
        )
        self.chat_template = options.get("chat_template")  # str, dict of named templates, or None
        self.name_or_path = name_or_path

    @classmethod
    def from_dir(cls, path: str | Path) -> "FastTokenizer | None":
        """The tokenizer in `path`, or None when transformers would build it another way."""
        try:
            return _load(Path(path), str(path))
        except Exception:  # a file transformers may still read, or fail on with its own message
            return None

    # ---- encode / decode, as TokenizersBackend ----

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"FastTokenizer.encode takes one string, got {type(text).__name__}")
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None):
        """Text of one id list (or int); a list of lists gives a list of texts, as in transformers."""
        token_ids = token_ids.tolist() if hasattr(token_ids, "tolist") else token_ids  # numpy, torch
        if isinstance(token_ids, (list, tuple)) and token_ids and isinstance(token_ids[0], (list, tuple)):
            return [self._decode(ids, skip_special_tokens, clean_up_tokenization_spaces) for ids in token_ids]
        return self._decode(token_ids, skip_special_tokens, clean_up_tokenization_spaces)

    def _decode(self, token_ids, skip_special_tokens: bool, clean_up) -> str:
        if isinstance(token_ids, int):
            token_ids = [token_ids]
        text = self._tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)
        clean_up = clean_up if clean_up is not None else self.clean_up_tokenization_spaces
        if clean_up and (type(self._tokenizer.model).__name__ != "BPE" or self._clean_up_bpe):
            text = _clean_up_tokenization(text)
        return text

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(int(i)) for i in ids if int(i) not in skip]

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self._token_to_id(tokens)
        return [self._token_to_id(t) for t in tokens]

    def _token_to_id(self, token: str) -> int | None:
        index = self._tokenizer.token_to_id(token)
        if index is None:  # transformers answers unk's id (it would recurse forever if unk had none)
            unk = self._special.get("unk_token")
            return None if unk is None else self._tokenizer.token_to_id(str(unk))
        return index

    # ---- vocabulary and special tokens ----

    @property
    def vocab_size(self) -> int:
        """The base vocabulary, without added tokens (transformers' definition)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def __bool__(self) -> bool:
        return True

    @property
    def backend_tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return {name: str(value) for name, value in self._special.items() if value is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        named = [str(v) for v in self._special.values() if v is not None]
        return list(dict.fromkeys(named + [str(t) for t in self._extra]))

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    def __getattr__(self, name: str):
        # Only reached for names that are not real attributes: bos_token, bos_token_id, image_token, ...
        special = self.__dict__.get("_special", {})
        base = name.removesuffix("_ids").removesuffix("_id")
        if base == "extra_special_tokens":
            tokens = [str(t) for t in self.__dict__.get("_extra", [])]
            return tokens if base == name else self.convert_tokens_to_ids(tokens)
        if base not in special:
            raise AttributeError(f"FastTokenizer has no attribute {name}")
        value = special[base]
        if value is None:
            return None
        return str(value) if base == name else self._token_to_id(str(value))

    def __repr__(self) -> str:
        return f"FastTokenizer(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, len={len(self)})"

    # ---- chat templates ----

    def get_chat_template(self, chat_template: str | None = None, tools: list | None = None) -> str:
        if isinstance(self.chat_template, dict):
            templates = self.chat_template
            if chat_template is not None and chat_template in templates:
                return templates[chat_template]
            if chat_template is None:
                if tools is not None and "tool_use" in templates:
                    return templates["tool_use"]
                if "default" in templates:
                    return templates["default"]
                raise ValueError(f"This model has several chat templates and no default: {sorted(templates)}")
        elif chat_template is None:
            if self.chat_template is None:
                raise ValueError("Cannot use chat template functions: this tokenizer has no chat_template")
            return self.chat_template
        return chat_template

    def apply_chat_template(
        self,
        conversation,
        tools: list[dict] | None = None,
        documents: list[dict] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        return_dict: bool = True,
        **kwargs,
    ):
        """transformers 5's apply_chat_template: the rendered text (tokenize=False), else its ids
        (return_dict=False) or {"input_ids", "attention_mask"}. Other kwargs reach the template."""
        for option, default in _UNSUPPORTED_CHAT_OPTIONS.items():
            if kwargs.pop(option, default) != default:
                raise NotImplementedError(f"FastTokenizer.apply_chat_template does not support {option}")
        template = self.get_chat_template(chat_template, tools)
        if isinstance(conversation, (list, tuple)) and len(conversation) == 0:
            raise ValueError(
                "Cannot apply chat template to an empty conversation. Provide at least one message."
            )
        is_batched = isinstance(conversation, (list, tuple)) and (
            isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages")
        )
        conversations = conversation if is_batched else [conversation]
        # Many templates print "None" for content=None (OpenAI's tool-call messages); a missing key they handle.
        conversations = [[{k: v for k, v in m.items() if v is not None} for m in c] for c in conversations]
        context = {**self.special_tokens_map, **kwargs}
        rendered = [
            render_chat_template(template, chat, tools, documents, add_generation_prompt, context)
            for chat in conversations
        ]
        if not tokenize:
            return rendered if is_batched else rendered[0]
        ids = [self.encode(text, add_special_tokens=False) for text in rendered]
        if not return_dict:
            return ids if is_batched else ids[0]
        masks = [[1] * len(i) for i in ids]
        return (
            {"input_ids": ids, "attention_mask": masks}
            if is_batched
            else {"input_ids": ids[0], "attention_mask": masks[0]}
        )


def _load(path: Path, name_or_path: str) -> FastTokenizer | None:
    """Mirrors TokenizersBackend.from_pretrained step by step, or None where it would branch off."""
    tokenizer_file, config_file = path / "tokenizer.json", path / "tokenizer_config.json"
    if not (tokenizer_file.is_file() and config_file.is_file()):
        return None
    config = _read_json(config_file)
    if not _loads_as_is(path, config):
        return None
    # With a tokenizer.json, transformers 5 drops add_bos_token/add_eos_token: its post-processor rules.
    kwargs = {
        k: v
        for k, v in config.items()
        if k not in ("tokenizer_class", "init_inputs", "add_bos_token", "add_eos_token")
    }
    templates = {}
    if (path / "chat_template.jinja").is_file():  # overrides the config's template
        templates["default"] = _read_text(path / "chat_template.jinja")
    if (path / "additional_chat_templates").is_dir():
        for file in (path / "additional_chat_templates").glob("*.jinja"):
            templates[file.name.removesuffix(".jinja")] = _read_text(file)
    if templates:
        kwargs["chat_template"] = templates["default"] if list(templates) == ["default"] else templates
    if "additional_special_tokens" in kwargs and not kwargs.get("extra_special_tokens"):
        kwargs["extra_special_tokens"] = kwargs.pop("additional_special_tokens")
    # Other *_token entries (image_token, ...) become named special tokens after the standard ones.
    specific = {
        k: kwargs.pop(k)
        for k in list(kwargs)
        if k not in NAMED_SPECIAL_TOKENS and k.endswith("_token") and isinstance(kwargs[k], str)
    }
    if isinstance(kwargs.get("extra_special_tokens"), dict):
        specific.update(kwargs.pop("extra_special_tokens"))

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    if "added_tokens_decoder" in kwargs:
        added = {int(i): AddedToken(**t) for i, t in kwargs.pop("added_tokens_decoder").items()}
    elif any((path / name).is_file() for name in _LEGACY_FILES):
        return None
    else:
        added = tokenizer.get_added_tokens_decoder()  # what transformers reads from tokenizer.json
    added_by_text = {str(t): t for t in added.values()}
    kwargs, specific = _added_tokens_from_json(kwargs), _added_tokens_from_json(specific)
    for name in NAMED_SPECIAL_TOKENS:
        if kwargs.get(name) is not None and added_by_text:
            kwargs[name] = added_by_text.get(str(kwargs[name]), kwargs[name])
    if tokenizer.padding is not None:  # a padding spec in tokenizer.json names the pad token
        kwargs.setdefault("pad_token", tokenizer.padding["pad_token"])
    # encode() runs with neither (transformers switches them off per call).
    tokenizer.no_truncation()
    tokenizer.no_padding()
    had_post_processor = tokenizer.post_processor is not None

    special: dict = dict.fromkeys(NAMED_SPECIAL_TOKENS)
    extra: list = []
    converted = {}  # *_token entries given as AddedToken dicts: transformers puts these first
    for key in list(kwargs):
        if key in NAMED_SPECIAL_TOKENS:
            special[key] = kwargs.pop(key)
        elif key == "extra_special_tokens":
            value = kwargs.pop(key)
            if value is not None and not isinstance(value, (list, tuple)):
                return None
            extra = list(value or [])
        elif key.endswith("_token") and isinstance(kwargs[key], (str, AddedToken)):
            converted[key] = kwargs.pop(key)
    special.update({**converted, **specific})
    if not all(v is None or isinstance(v, (str, AddedToken)) for v in special.values()):
        return None  # transformers raises TypeError
    if isinstance(kwargs.get("chat_template"), (list, tuple)):
        kwargs["chat_template"] = {t["name"]: t["template"] for t in kwargs["chat_template"]}
    tokenizer.encode_special_tokens = kwargs.get("split_special_tokens", False)

    # transformers re-adds every added token of the config, then the special tokens it lacks.
    to_add = [token for _, token in sorted(added.items(), key=lambda item: item[0])]
    known = {t.content for t in tokenizer.get_added_tokens_decoder().values()} | {str(t) for t in to_add}
    for token in [*(v for v in special.values() if v is not None), *extra]:
        if str(token) not in known and token not in to_add:
            to_add.append(token)
    named = [str(t) for t in special.values() if t]
    tokens = []
    for token in to_add:
        if isinstance(token, str):
            token = AddedToken(token, special=True)
        elif not token.special and str(token) in named:
            token.special = True
        tokens.append(token)
    if tokens:
        tokenizer.add_tokens(tokens)
    if not had_post_processor or tokenizer.post_processor is None:
        # transformers' update_post_processor with add_bos_token = add_eos_token = False.
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A:0", pair="$A:0 $B:1", special_tokens=[]
        )
    return FastTokenizer(tokenizer, special, extra, kwargs, name_or_path)


def _loads_as_is(path: Path, config: dict) -> bool:
    """Whether AutoTokenizer would load this directory with TokenizersBackend, unpatched."""
    if config.get("tokenizer_class") not in _PLAIN_CLASSES or "auto_map" in config:
        return False
    if "fast_tokenizer_files" in config or config.get("fix_mistral_regex") or (path / "tekken.json").exists():
        return False
    model_config = path / "config.json"
    if model_config.is_file() and _read_json(model_config).get("model_type") in _CLASS_OVERRIDDEN_MODEL_TYPES:
        return False
    return True


def _added_tokens_from_json(obj):
    """transformers' convert_added_tokens: {"__type": "AddedToken", ...} -> AddedToken, anywhere."""
    if isinstance(obj, dict) and obj.get("__type") == "AddedToken":
        return AddedToken(**{k: v for k, v in obj.items() if k != "__type"})
    if isinstance(obj, (list, tuple)):
        return [_added_tokens_from_json(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _added_tokens_from_json(v) for k, v in obj.items()}
    return obj


def _read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _read_text(path: Path) -> str:
    with open(path, encoding="utf-8") as f:  # text mode: "\r\n" -> "\n", as transformers reads it
        return f.read()


def _clean_up_tokenization(text: str) -> str:
    """transformers' clean_up_tokenization (made for WordPiece's spaced-out punctuation)."""
    for spaced, joined in (
        (" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
        (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"),
    ):  # fmt: skip
        text = text.replace(spaced, joined)
    return text
