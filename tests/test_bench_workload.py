"""Bench workloads: synthetic prompts of exact token counts (natural text, seeded, shared prefix)
and datasets (JSONL prompts, ShareGPT JSON / JSONL, malformed entries, empty files, sampling).

Exactness runs on the default model's tokenizer (real_model) and, everywhere, on two small
tokenizers trained here on one play: byte-level BPE and a SentencePiece-like Metaspace BPE."""

import collections
import json
import time

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from llmtool.core.bench.workload import (
    BLOCK_LEN,
    DEFAULT_OUTPUT_LEN,
    Request,
    WorkloadConfig,
    build_requests,
    dataset_requests,
    load_dataset,
    synthetic_requests,
)
from llmtool.core.errors import UsageError
from llmtool.core.texts import play_text


class TinyTokenizer:
    """encode/decode as transformers', around a `tokenizers` model; `batched` exposes the backend
    (the fast path), else the workload falls back to one encode call per text."""

    def __init__(self, backend: Tokenizer, batched: bool):
        self._backend = backend
        if batched:
            self.backend_tokenizer = backend

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)


def _train(kind: str) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if kind == "bytelevel":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:  # SentencePiece-like: spaces become "▁", a "▁" is prepended to the text
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = []
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator([play_text("hamlet")], trainer)
    return tok


@pytest.fixture(scope="module", params=["bytelevel-batched", "metaspace-single"])
def tiny_tok(request):
    kind, mode = request.param.split("-")
    return TinyTokenizer(_train(kind), batched=mode == "batched")


@pytest.fixture(scope="module")
def tok():
    from llmtool.core.models.aliases import ALIASES, alias_path
    from llmtool.core.models.tokenizer import load_tokenizer_gguf

    return load_tokenizer_gguf(alias_path(ALIASES["smollm2-135m"]))


def encode(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def assert_exact(tok, requests: list[Request]):
    for r in requests:
        assert len(encode(tok, r.prompt)) == r.prompt_len, r


# ---- synthetic: exact lengths ----


@pytest.mark.real_model
@pytest.mark.parametrize("input_len", [1, 7, 128, 1000])
@pytest.mark.parametrize("len_range", [0.0, 0.5])
def test_exact_token_counts(tok, input_len, len_range):
    config = WorkloadConfig(input_len=input_len, len_range=len_range, num_requests=40, seed=3)
    requests = synthetic_requests(config, tok)
    assert [r.index for r in requests] == list(range(40))
    assert_exact(tok, requests)
    low, high = max(1, int(input_len * (1 - len_range))), -(-input_len * (1 + len_range) // 1)
    assert all(low <= r.prompt_len <= high for r in requests)
    if len_range == 0:
        assert {r.prompt_len for r in requests} == {input_len}
        assert {r.output_len for r in requests} == {DEFAULT_OUTPUT_LEN}
    elif input_len >= 7:
        assert len({r.prompt_len for r in requests}) > 1
        assert len({r.output_len for r in requests}) > 1
        assert all(64 <= r.output_len <= 192 for r in requests)


def test_exact_token_counts_other_tokenizers(tiny_tok):
    for input_len, prefix_len in [(1, 0), (9, 3), (200, 0), (300, 64)]:
        config = WorkloadConfig(input_len=input_len, prefix_len=prefix_len, len_range=0.3, num_requests=30)
        requests = synthetic_requests(config, tiny_tok)
        assert_exact(tiny_tok, requests)
        assert all(r.prompt_len >= prefix_len + 1 for r in requests)


@pytest.mark.real_model
def test_output_len_fixed_and_spread(tok):
    fixed = synthetic_requests(WorkloadConfig(input_len=16, output_len=50, num_requests=20), tok)
    assert {r.output_len for r in fixed} == {50}
    spread = synthetic_requests(
        WorkloadConfig(input_len=16, output_len=1, len_range=0.9, num_requests=20), tok
    )
    assert all(1 <= r.output_len <= 2 for r in spread)


# ---- synthetic: natural, distinct, reproducible ----


@pytest.mark.real_model
def test_prompts_are_natural_text_and_distinct(tok):
    requests = synthetic_requests(WorkloadConfig(input_len=256, num_requests=50), tok)
    for r in requests:
        ids = encode(tok, r.prompt)
        counts = collections.Counter(ids)
        assert len(counts) > 0.3 * len(ids)  # many distinct tokens, not one repeated
        assert counts.most_common(1)[0][1] <= 0.2 * len(ids)
        words = r.prompt.split()
        assert sum(w.strip(",.;:!?'").isalpha() for w in words) > 0.8 * len(words)
        assert "**" not in r.prompt and "\ufffd" not in r.prompt  # Markdown gone, no broken characters
    assert len({r.prompt for r in requests}) == len(requests)
    # No two prompts share their first cache block: they cannot hit a prefix cache by accident.
    assert len({tuple(encode(tok, r.prompt)[:BLOCK_LEN]) for r in requests}) == len(requests)


@pytest.mark.real_model
def test_same_seed_same_workload_other_seed_differs(tok):
    config = WorkloadConfig(input_len=64, len_range=0.5, num_requests=20, seed=7)
    first, again = synthetic_requests(config, tok), synthetic_requests(config, tok)
    assert first == again
    other = synthetic_requests(WorkloadConfig(input_len=64, len_range=0.5, num_requests=20, seed=8), tok)
    assert not {r.prompt for r in first} & {r.prompt for r in other}
    assert [r.prompt_len for r in first] != [r.prompt_len for r in other]


def test_same_seed_same_workload_other_tokenizer(tiny_tok):
    config = WorkloadConfig(input_len=40, prefix_len=8, num_requests=10, seed=1)
    assert synthetic_requests(config, tiny_tok) == synthetic_requests(config, tiny_tok)


# ---- synthetic: shared prefix ----


@pytest.mark.real_model
@pytest.mark.parametrize("prefix_len", [1, 5, 256])
def test_shared_prefix_is_exact_and_in_addition(tok, prefix_len):
    input_len = 100
    requests = synthetic_requests(
        WorkloadConfig(input_len=input_len, prefix_len=prefix_len, num_requests=30), tok
    )
    assert_exact(tok, requests)
    assert {r.prompt_len for r in requests} == {prefix_len + input_len}
    all_ids = [encode(tok, r.prompt) for r in requests]
    prefix_ids = all_ids[0][:prefix_len]
    prefix = tok.decode(prefix_ids)
    assert len(encode(tok, prefix)) == prefix_len
    for r, ids in zip(requests, all_ids, strict=True):
        assert r.prompt.startswith(prefix)
        assert ids[:prefix_len] == prefix_ids  # the same tokens: a real prefix-cache hit
    # The shared part is exactly the prefix: what follows differs.
    assert len({tuple(ids[prefix_len : prefix_len + BLOCK_LEN]) for ids in all_ids}) == len(requests)


# ---- synthetic: speed ----


@pytest.mark.real_model
@pytest.mark.slow
def test_thousand_long_prompts_are_quick(tok):
    start = time.perf_counter()
    requests = synthetic_requests(WorkloadConfig(input_len=1024, num_requests=1000), tok)
    elapsed = time.perf_counter() - start
    assert {r.prompt_len for r in requests} == {1024}
    assert elapsed < 10, f"{elapsed:.1f} s"  # ~1.5 s on 2 cores


# ---- config ----


@pytest.mark.parametrize(
    "bad",
    [
        dict(input_len=0),
        dict(output_len=0),
        dict(len_range=1.0),
        dict(len_range=-0.1),
        dict(prefix_len=-1),
        dict(num_requests=0),
        dict(dataset_max_entries=0),
    ],
)
def test_bad_config_is_a_usage_error(bad):
    with pytest.raises(UsageError):
        WorkloadConfig(**bad)


# ---- datasets ----


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


SHAREGPT = [
    {
        "id": "a",
        "conversations": [
            {"from": "human", "value": "What is a sonnet?"},
            {"from": "gpt", "value": "A poem."},
        ],
    },
    {
        "id": "b",
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Name a play."},
            {"from": "gpt", "value": "Hamlet, a tragedy by William Shakespeare."},
            {"from": "human", "value": "Another?"},
        ],
    },
    {"id": "c", "conversations": [{"from": "human", "value": "Unanswered question"}]},
]


def test_jsonl_prompts(tmp_path, tiny_tok):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "To be, or not to be"},
            {"prompt": "Alas, poor Yorick", "max_tokens": 9},
            {"prompt": "x", "output_len": 3},
        ],
    )
    requests = dataset_requests(path, tiny_tok, WorkloadConfig(num_requests=3))
    assert sorted(r.prompt for r in requests) == ["Alas, poor Yorick", "To be, or not to be", "x"]
    by_prompt = {r.prompt: r for r in requests}
    assert by_prompt["Alas, poor Yorick"].output_len == 9
    assert by_prompt["x"].output_len == 3
    assert by_prompt["To be, or not to be"].output_len == DEFAULT_OUTPUT_LEN
    assert all(r.messages is None for r in requests)
    assert_exact(tiny_tok, requests)
    assert [r.index for r in requests] == [0, 1, 2]
    fixed = dataset_requests(path, tiny_tok, WorkloadConfig(num_requests=3, output_len=5))
    assert {r.output_len for r in fixed} == {5}


@pytest.mark.parametrize("layout", ["array", "jsonl"])
def test_sharegpt(tmp_path, tiny_tok, layout):
    path = tmp_path / f"sharegpt.{layout}"
    if layout == "array":
        path.write_text(json.dumps(SHAREGPT, indent=2))
    else:
        write_jsonl(path, SHAREGPT)
    requests = {r.prompt: r for r in dataset_requests(path, tiny_tok, WorkloadConfig(num_requests=3))}
    assert set(requests) == {"What is a sonnet?", "Name a play.", "Unanswered question"}
    assert requests["What is a sonnet?"].messages == [{"role": "user", "content": "What is a sonnet?"}]
    assert requests["Name a play."].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a play."},
    ]
    # The first reply's token count is the output length; no reply: the default.
    assert requests["What is a sonnet?"].output_len == len(encode(tiny_tok, "A poem."))
    reply = "Hamlet, a tragedy by William Shakespeare."
    assert requests["Name a play."].output_len == len(encode(tiny_tok, reply))
    assert requests["Unanswered question"].output_len == DEFAULT_OUTPUT_LEN
    assert_exact(tiny_tok, list(requests.values()))


def test_openai_messages_entries(tmp_path, tiny_tok):
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]}
    (request,) = dataset_requests(
        write_jsonl(tmp_path / "m.jsonl", [row]), tiny_tok, WorkloadConfig(num_requests=1)
    )
    assert request.prompt == "Hi" and request.messages == [{"role": "user", "content": "Hi"}]
    assert request.output_len == len(encode(tiny_tok, "Hello there"))


def test_malformed_entries_are_skipped_and_counted(tmp_path, tiny_tok, caplog):
    rows = [
        {"prompt": "good one"},
        "{not json",
        "[1, 2]",
        {"prompt": ""},
        {"prompt": 42},
        {"prompt": "bad length", "max_tokens": 0},
        {"conversations": [{"from": "gpt", "value": "no question"}]},
        {"conversations": [{"from": "human", "value": "  "}]},
        {"conversations": "nope"},
        {"text": "unknown shape"},
        {"prompt": "good two"},
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    dataset = load_dataset(path)
    assert [e.prompt for e in dataset.entries] == ["good one", "good two"]
    assert dataset.num_skipped == 9
    with caplog.at_level("WARNING", logger="llmtool.bench"):
        requests = dataset_requests(path, tiny_tok, WorkloadConfig(num_requests=2))
    assert {r.prompt for r in requests} == {"good one", "good two"}
    assert "skipped 9 malformed entries" in caplog.text


@pytest.mark.parametrize("content", ["", "\n  \n", "[]", '{"text": 1}\n"just a string"\n'])
def test_empty_or_useless_dataset_is_one_usage_line(tmp_path, tiny_tok, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(UsageError) as info:
        dataset_requests(path, tiny_tok, WorkloadConfig())
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "expected" in message
    assert info.value.exit_code == 2


def test_unreadable_dataset_is_one_usage_line(tmp_path):
    for path in (tmp_path / "missing.jsonl", tmp_path):  # absent; a directory
        with pytest.raises(UsageError) as info:
            load_dataset(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)
    binary = tmp_path / "data.bin"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UsageError, match="cannot read dataset"):
        load_dataset(binary)


def test_sampling_is_seeded_and_cycles(tmp_path, tiny_tok):
    path = write_jsonl(tmp_path / "many.jsonl", [{"prompt": f"prompt number {i}"} for i in range(20)])

    def prompts(**kw):
        return [r.prompt for r in dataset_requests(path, tiny_tok, WorkloadConfig(**kw))]

    sample = prompts(num_requests=5, seed=1)
    assert sample == prompts(num_requests=5, seed=1)
    assert len(set(sample)) == 5  # no repeats while the dataset lasts
    assert sample != prompts(num_requests=5, seed=2)
    everything = prompts(num_requests=20, seed=1)
    assert sorted(everything) == sorted(f"prompt number {i}" for i in range(20))
    assert everything[:5] == sample  # a larger sample extends a smaller one
    cycled = prompts(num_requests=45, seed=1)
    assert cycled[:20] == everything and cycled[20:40] == everything and cycled[40:] == sample
    # dataset_max_entries: only the first N usable entries are in play.
    head = dataset_requests(path, tiny_tok, WorkloadConfig(num_requests=10, dataset_max_entries=3))
    assert {r.prompt for r in head} == {f"prompt number {i}" for i in range(3)}


def test_build_requests_dispatches(tmp_path, tiny_tok):
    path = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "only prompt"}])
    from_dataset = build_requests(WorkloadConfig(num_requests=2, dataset=path), tiny_tok)
    assert [r.prompt for r in from_dataset] == ["only prompt", "only prompt"]
    synthetic = build_requests(WorkloadConfig(input_len=12, num_requests=2), tiny_tok)
    assert {r.prompt_len for r in synthetic} == {12}
