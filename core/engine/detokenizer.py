"""Detokenizer: one sequence's output token ids -> text deltas, with stop strings.

Incremental as vLLM's detokenize_incrementally: each step decodes only a small window of
recent ids. Text up to `read_offset` has been emitted; the ids from `prefix_offset` to
it are decoded again as context, because a token's text can depend on its neighbours
(SentencePiece drops a leading space at the start of a decode; byte-level BPE splits
characters across tokens). The window is seeded with the last prompt tokens so the first
output token decodes as it would after the prompt. A window whose text ends in U+FFFD is
an unfinished UTF-8 character: nothing is emitted until it completes.

Stop strings: the output ends right before the first one (right after it with
include_stop_str_in_output). While streaming, a tail that could still grow into a stop
string is held back, so a stop string is never partly emitted; flush() releases it.
Not here: stop token ids and EOS (the engine sees those ids itself).
"""

from dataclasses import dataclass

from .sampling_params import SamplingParams

# Prompt tokens decoded as context for the first output token (vLLM uses 5 too).
_NUM_CONTEXT_TOKENS = 5


@dataclass
class DetokenizerDelta:
    text: str  # new output text, safe to show
    stop_hit: bool  # a stop string ended the output; nothing more will come


class Detokenizer:
    def __init__(self, tokenizer, prompt_token_ids: list[int], params: SamplingParams):
        self.tokenizer = tokenizer
        self.skip_special_tokens = params.skip_special_tokens
        self.stop = params.stop
        self.include_stop = params.include_stop_str_in_output
        self.stop_hit = False
        # Longest emitted tail a stop string could start in (include_stop may emit a stop's start).
        self._max_stop_len = max(map(len, self.stop), default=0)
        self._window = list(prompt_token_ids[-_NUM_CONTEXT_TOKENS:])  # ids from prefix_offset on
        self._read_offset = len(self._window)  # in the window: ids before it are emitted text
        self._prefix_text = self._decode(self._window)  # text of window[:read_offset]
        self._chunks: list[str] = []  # emitted text
        self._tail = ""  # the last (max stop length - 1) emitted characters
        self._held = ""  # decoded, not emitted: it could be the start of a stop string

    @property
    def text(self) -> str:
        """All output text emitted so far."""
        return "".join(self._chunks)

    def push(self, token_ids: list[int]) -> DetokenizerDelta:
        if self.stop_hit:
            return DetokenizerDelta("", True)
        new_text = "".join([self._decode_next(t) for t in token_ids])
        return DetokenizerDelta(self._emit(new_text, final=False), self.stop_hit)

    def flush(self) -> str:
        """The held-back text, when the sequence ends for another reason (EOS, length, abort).
        An unfinished UTF-8 character at the very end stays out, as while streaming."""
        if self.stop_hit:
            return ""
        return self._emit("", final=True)

    def _decode(self, ids: list[int]) -> str:
        # Cleaning up spaces (" ." -> ".") looks across tokens, so it cannot be incremental.
        return self.tokenizer.decode(
            ids, skip_special_tokens=self.skip_special_tokens, clean_up_tokenization_spaces=False
        )

    def _decode_next(self, token_id: int) -> str:
        self._window.append(token_id)
        text = self._decode(self._window)
        # No new text (a skipped special token) or an unfinished character: wait, keep the offsets.
        if len(text) <= len(self._prefix_text) or text.endswith("\ufffd"):
            return ""
        delta = text[len(self._prefix_text) :]
        # What was just read becomes the next context; older ids leave the window.
        del self._window[: self._read_offset]
        self._read_offset = len(self._window)
        self._prefix_text = self._decode(self._window)
        return delta

    def _emit(self, new_text: str, final: bool) -> str:
        if not self.stop:
            self._chunks.append(new_text)
            return new_text
        pending = self._held + new_text
        text = self._tail + pending  # a stop string that ends in new_text starts in here
        start = len(self._tail)
        match = self._find_stop(text, start + len(self._held))
        if match is not None:
            stop_start, stop_end = match
            out, self._held = text[start : stop_end if self.include_stop else stop_start], ""
            self.stop_hit = True
        else:
            keep = 0 if final or self.include_stop else self._partial_stop_len(pending)
            out, self._held = pending[: len(pending) - keep], pending[len(pending) - keep :]
        self._chunks.append(out)
        tail = self._tail + out
        self._tail = tail[max(0, len(tail) - (self._max_stop_len - 1)) :]
        return out

    def _find_stop(self, text: str, new_from: int) -> tuple[int, int] | None:
        """(start, end) of the stop string that completes first in `text`, looking only at
        matches that end past `new_from` (earlier ones were searched before)."""
        found = []
        for stop in self.stop:
            i = text.find(stop, max(0, new_from - len(stop) + 1))
            if i >= 0:
                found.append((i + len(stop), i))
        if not found:
            return None
        # The one a character-by-character stream would meet first; the longest on a tie.
        end, start = min(found)
        return start, end

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest end of `text` that is a proper start of some stop string."""
        for n in range(min(len(text), self._max_stop_len - 1), 0, -1):
            if any(stop.startswith(text[-n:]) for stop in self.stop):
                return n
        return 0
