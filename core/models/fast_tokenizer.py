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

import dataclasses
import json
import sys
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, processors

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
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
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
            _render(template, chat, tools, documents, add_generation_prompt, context)
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


def _render(template: str, chat, tools, documents, add_generation_prompt: bool, context: dict) -> str:
    """transformers' render_jinja_template for one conversation."""
    if tools is not None:
        for tool in tools:
            if not isinstance(tool, dict):
                raise ValueError("FastTokenizer takes tools as JSON schemas (dicts), not Python functions")
    for document in documents or ():
        if not isinstance(document, dict):
            raise TypeError("Documents should be a list of dicts with 'title' and 'text' keys!")
    if hasattr(chat, "messages"):
        chat = chat.messages
    chat = _plain_template_data(chat)
    for message in chat:
        if not isinstance(message, dict):
            raise TypeError(
                f"Chat messages should be dicts, dataclasses or pydantic models, but got {message!r}."
            )
    return _compile(template).render(
        messages=_alias_reasoning_fields(chat),
        tools=_plain_template_data(tools),
        documents=_plain_template_data(documents),
        add_generation_prompt=add_generation_prompt,
        **_plain_template_data(context),
    )


def _plain_template_data(value):
    """Everything a (Hub-supplied, untrusted) template sees rebuilt from plain JSON types, as transformers
    does: rich objects carry methods the sandbox does not know to be dangerous."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain_template_data(k): _plain_template_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_template_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain_template_data(v) for v in value)
    numpy = sys.modules.get("numpy")  # a numpy scalar implies numpy is imported; never import it here
    if numpy is not None and isinstance(value, numpy.generic):
        return _plain_template_data(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain_template_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain_template_data(value.model_dump())
    return f"<{type(value).__name__}>"


def _alias_reasoning_fields(chat: list[dict]) -> list[dict]:
    out = []
    for message in chat:
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


@lru_cache
def _compile(template: str):
    """transformers' _compile_jinja_template: the same sandbox, filters and globals. jinja2 is
    imported here, on first use, to keep loading fast."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    version = tuple(int(p) for p in jinja2.__version__.split(".")[:3] if p.isdigit())
    if version < (3, 1, 6):  # older ones have known sandbox escapes; templates are untrusted code
        raise ImportError(f"apply_chat_template requires jinja2>=3.1.6, found {jinja2.__version__}")

    class GenerationTag(jinja2.ext.Extension):
        # {% generation %} marks assistant text for training masks; rendering keeps just its body.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters; chat templates want the text as it is.
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    class TemplateDict:
        # dict() without attribute access to the dict type itself.
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        # Namespaces reject dunder-like names, which lead to CPython internals.
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}."
                )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env.from_string(template)
