"""A request body as a JSON object, or a RequestError (400) that says what is wrong with it.

Python's json module accepts what the rest of the server cannot carry: nesting deep enough to
exhaust the recursion limit here or later (pydantic, repr, the chat template), integers past
Python's 4300-digit str limit (a ValueError), and lone UTF-16 surrogates ("\\ud800" escapes,
or their raw bytes, which json decodes with 'surrogatepass') that no tokenizer or UTF-8
encoder takes. Each is refused here, before validation, naming the field where it can.

Not here: the size and read-time limits of the body (limits.py), field validation (protocol.py).
"""

import json
import re
import sys
from typing import Any

from .protocol import RequestError

MAX_DEPTH = 64  # containers inside containers; OpenAI bodies (tool JSON schemas included) need far fewer

# A lone surrogate can only come from an escape \uD800-\uDFFF or from its raw UTF-8 bytes
# (ED A0..BF xx). Bodies with neither (nearly all) skip the walk over every string.
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_DIGITS = sys.get_int_max_str_digits() or 4300  # 0 means unlimited; keep Python's default then


class _TooManyDigits(Exception):
    pass


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_DIGITS:
        raise _TooManyDigits(len(text.lstrip("-")))
    return int(text)


def decode_json(raw: bytes) -> dict:
    """The body parsed; RequestError for invalid JSON, a non-object, deep nesting, a number of
    more than 4300 digits or a lone surrogate in any string."""
    try:
        data = json.loads(raw, parse_int=_parse_int)
    except _TooManyDigits as e:
        raise RequestError(
            f"The request body holds an integer of {e.args[0]} digits; at most {_MAX_DIGITS} are accepted.",
            None,
            "invalid_value",
        ) from None
    except RecursionError:
        raise _too_deep(None) from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise RequestError(f"The request body is not valid JSON: {e}.", None, "invalid_json") from None
    if not isinstance(data, dict):
        raise RequestError("The request body must be a JSON object.", None, "invalid_json")
    _check_tree(data, surrogates=_MAYBE_SURROGATE.search(raw) is not None)
    return data


def _check_tree(data: Any, surrogates: bool) -> None:
    """Depth and (when the raw bytes suggest one) lone surrogates, without recursion: this very
    walk must not be what a deep body breaks."""
    stack: list[tuple[Any, tuple, int]] = [(data, (), 1)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep(path)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        children = []
        for key, item in items:
            if surrogates and isinstance(key, str) and _has_surrogate(key):
                raise _surrogate_error(path, in_key=True)
            if isinstance(item, dict | list):
                children.append((item, (*path, key), depth + 1))
            elif surrogates and isinstance(item, str) and _has_surrogate(item):
                raise _surrogate_error((*path, key))
        stack.extend(reversed(children))  # document order: the first bad field is the one named


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None


def field_path(path: tuple) -> str | None:
    """('messages', 0, 'content') -> 'messages[0].content'; () -> None (the body itself)."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def _too_deep(path: tuple | None) -> RequestError:
    param = field_path(path[:1]) if path else None  # the top-level field: the full path is noise
    where = f" (in '{param}')" if param else ""
    return RequestError(
        f"The request body nests deeper than {MAX_DEPTH} levels{where}.", param, "invalid_json"
    )


def _surrogate_error(path: tuple, in_key: bool = False) -> RequestError:
    param = field_path(path)
    if param is None:
        what = "a key of the request body"
    else:
        what = f"a key of '{param}'" if in_key else f"'{param}'"
    return RequestError(
        f"Invalid value for {what}: it holds a lone UTF-16 surrogate (U+D800..U+DFFF), "
        "which is not a Unicode character.",
        param,
        "invalid_value",
    )
