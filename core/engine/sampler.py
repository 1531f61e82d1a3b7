"""Sampler: picks each sequence's next token from one step's fp32 logits.

Processing follows vLLM: logit_bias, min_tokens and penalties on the raw logits, then
temperature (0 is greedy: argmax of the processed logits), then min_p, top_k, top_p, then a
draw. Logprobs come from the raw logits (before logit_bias too), as vLLM reports them by default.

Each sequence owns a CPU torch.Generator, kept across steps (so preemption does not
change its stream), and every sampled token takes exactly one draw of V exponentials
from it: argmax(probs / Exp(1)) picks token i with probability probs[i] (the
exponential race). A seeded request's tokens therefore depend on its seed and its
logits only, never on the other rows of the batch. Not here: stop conditions (the
engine) and text (Detokenizer).
"""

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from .sequence import Sequence

# top_k / top_p look at this many most likely tokens first: topk of 256 costs a fraction of
# a 49k-vocab sort, and a peaked row's nucleus lies within them; only rows whose nucleus
# outgrows them (flat distributions, about a third of rows at T=1 on SmolLM2) are sorted.
_NUM_CANDIDATES = 256


@dataclass
class TokenLogprobs:
    logprob: float  # the chosen token's log-probability under the raw logits
    top: list[tuple[int, float]]  # the k most likely (token id, logprob), descending
    rank: int | None = None  # tokens at least as likely, itself included (prompt logprobs only)


@dataclass
class SamplerOutput:
    token_ids: list[int]  # one per row of the logits
    logprobs: list[TokenLogprobs | None]  # per row; None where the request asked for none


class Sampler:
    def __init__(self, vocab_size: int, seed: int = 0):
        self.vocab_size = vocab_size
        self._seeder = torch.Generator().manual_seed(seed)  # seeds requests that bring none
        self._generators: dict[int, torch.Generator] = {}  # seq_id -> its own stream

    def release(self, seq_id: int) -> None:
        self._generators.pop(seq_id, None)

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> SamplerOutput:
        """Row i of `logits` [B, V] belongs to seqs[i]; `logits` itself is left untouched."""
        if logits.dim() != 2 or logits.shape != (len(seqs), self.vocab_size):
            raise ValueError(f"logits {tuple(logits.shape)} do not match {len(seqs)} x {self.vocab_size}")
        logits = logits.float()  # no copy when already fp32; bf16 would break the in-place steps
        processed = logits
        if any(_has_penalty(s) or _masks_stop_ids(s) or s.params.logit_bias for s in seqs):
            processed = logits.clone()
            apply_logit_bias(processed, seqs)
            apply_penalties(processed, seqs)
            apply_min_tokens(processed, seqs)
        token_ids = self._choose(processed, seqs)  # [B]
        return SamplerOutput(token_ids.tolist(), _logprobs(logits, seqs, token_ids))

    def _choose(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        greedy = [i for i, s in enumerate(seqs) if s.params.is_greedy]
        if len(greedy) == len(seqs):
            return logits.max(-1).indices  # = argmax (first maximum), 2x faster on CPU
        rows = [i for i, s in enumerate(seqs) if not s.params.is_greedy]
        if not greedy:
            return self._draw(logits, seqs)
        token_ids = torch.empty(len(seqs), dtype=torch.long, device=logits.device)
        token_ids[greedy] = logits[greedy].max(-1).indices
        token_ids[rows] = self._draw(logits[rows], [seqs[i] for i in rows])
        return token_ids

    def _draw(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """Temperature, filters, then the exponential race; every row here samples."""
        probs = self.probs(logits, seqs)  # [R, V]
        noise = torch.empty(probs.shape)  # [R, V] on CPU, where the generators live
        for row, seq in enumerate(seqs):
            noise[row].uniform_(generator=self.generator(seq))
        # -log(U) is Exp(1); U == 0 gives +inf noise, so that token simply loses.
        noise = noise.log_().neg_().to(logits.device)
        return probs.div_(noise).argmax(-1)

    @staticmethod
    def probs(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """The distribution a non-greedy row samples from [R, V]: softmax at the row's temperature,
        then min_p, top_k, top_p. Filtered tokens get 0 and rows are NOT renormalised (the race
        ignores scale; speculative verification divides by the sum itself)."""
        device = logits.device
        temperature = torch.tensor([s.params.temperature for s in seqs], device=device)
        probs = torch.softmax(logits / temperature[:, None], dim=-1)  # [R, V]
        # Filters zero probabilities rather than re-softmaxing: the race ignores scale.
        min_p = [s.params.min_p for s in seqs]
        if any(min_p):
            apply_min_p(probs, torch.tensor(min_p, device=device))
        top_k = [s.params.top_k for s in seqs]
        top_p = [s.params.top_p for s in seqs]
        if any(top_k) or min(top_p) < 1:
            apply_top_k_top_p(probs, torch.tensor(top_k, device=device), torch.tensor(top_p, device=device))
        return probs

    def generator(self, seq: Sequence) -> torch.Generator:
        """The sequence's own random stream (speculative verification draws from it too)."""
        generator = self._generators.get(seq.seq_id)
        if generator is None:
            seed = seq.params.seed
            if seed is None:
                seed = int(torch.randint(2**62, (1,), generator=self._seeder))
            # manual_seed takes 64 bits; a request may send any integer.
            generator = torch.Generator().manual_seed(seed % 2**64)
            self._generators[seq.seq_id] = generator
        return generator


def _logprobs(logits: torch.Tensor, seqs: list[Sequence], token_ids: torch.Tensor) -> list:
    """From the raw logits [B, V]: each chosen token's logprob and the row's top k."""
    out: list[TokenLogprobs | None] = [None] * len(seqs)
    rows = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
    if not rows:
        return out
    logprobs = torch.log_softmax(logits[rows], dim=-1)  # [r, V]
    chosen = logprobs.gather(1, token_ids[rows][:, None]).squeeze(1).tolist()  # [r]
    top_values, top_ids = logprobs.topk(max(seqs[i].params.logprobs for i in rows), dim=-1)  # [r, k]
    top_values, top_ids = top_values.tolist(), top_ids.tolist()
    for j, i in enumerate(rows):
        k = seqs[i].params.logprobs
        out[i] = TokenLogprobs(chosen[j], list(zip(top_ids[j][:k], top_values[j][:k], strict=True)))
    return out


def _has_penalty(seq: Sequence) -> bool:
    p = seq.params
    return p.repetition_penalty != 1 or p.frequency_penalty != 0 or p.presence_penalty != 0


def _masks_stop_ids(seq: Sequence) -> bool:
    return seq.num_output_tokens < seq.params.min_tokens


def _distinct_ids(lists: list[list[int]], vocab_size: int, device) -> tuple[torch.Tensor, ...]:
    """Each distinct (row, token id) pair over the rows' id lists [n], [n], and its count [n]:
    penalties touch only these entries, never a whole [B, V] pass."""
    lengths = torch.tensor([len(ids) for ids in lists])  # [B]
    rows = torch.repeat_interleave(torch.arange(len(lists)), lengths)  # [N]
    ids = torch.tensor(list(itertools.chain.from_iterable(lists)), dtype=torch.long)  # [N]
    keys, counts = torch.unique(rows * vocab_size + ids, return_counts=True)  # [n], [n]
    return (keys // vocab_size).to(device), (keys % vocab_size).to(device), counts.to(device)


def apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """In place. Repetition (HF/CTRL) over prompt + output; frequency/presence (OpenAI) over
    the output only. A row whose penalty is neutral contributes no ids, so costs nothing."""
    device, vocab_size = logits.device, logits.shape[1]
    repeated = [s.token_ids if s.params.repetition_penalty != 1 else [] for s in seqs]
    if any(repeated):
        rows, ids, _ = _distinct_ids(repeated, vocab_size, device)  # [n]
        penalty = torch.tensor([s.params.repetition_penalty for s in seqs], device=device)[rows]  # [n]
        seen = logits[rows, ids]  # [n]
        logits[rows, ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
    generated = [
        s.output_token_ids if s.params.frequency_penalty or s.params.presence_penalty else [] for s in seqs
    ]
    if any(generated):
        rows, ids, counts = _distinct_ids(generated, vocab_size, device)  # [n]
        frequency = torch.tensor([s.params.frequency_penalty for s in seqs], device=device)[rows]  # [n]
        presence = torch.tensor([s.params.presence_penalty for s in seqs], device=device)[rows]  # [n]
        logits[rows, ids] -= frequency * counts + presence


def apply_logit_bias(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """In place: each row's (token id, bias) pairs added to its logits (OpenAI's logit_bias)."""
    pairs = [(row, token, bias) for row, s in enumerate(seqs) for token, bias in s.params.logit_bias]
    if pairs:
        rows, ids, biases = zip(*pairs, strict=True)
        device = logits.device
        logits.index_put_(
            (torch.tensor(rows, device=device), torch.tensor(ids, device=device)),
            torch.tensor(biases, dtype=logits.dtype, device=device),
            accumulate=True,
        )


def apply_min_tokens(logits: torch.Tensor, seqs: list[Sequence]) -> None:
    """In place: EOS and stop ids get -inf while a sequence is shorter than min_tokens."""
    vocab_size = logits.shape[1]
    for row, seq in enumerate(seqs):
        if _masks_stop_ids(seq):
            ids = [t for t in (*seq.eos_token_ids, *seq.params.stop_token_ids) if 0 <= t < vocab_size]
            logits[row, ids] = float("-inf")


def apply_min_p(probs: torch.Tensor, min_p: torch.Tensor) -> None:
    """In place on probs [R, V]: zero tokens below min_p [R] times the row's top probability."""
    threshold = min_p[:, None] * probs.amax(dim=-1, keepdim=True)  # [R, 1]
    probs.masked_fill_(probs < threshold, 0)


def apply_top_k_top_p(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> None:
    """In place on probs [R, V]: keep the top_k [R] most likely (0: all), then the smallest
    set of those whose renormalised mass reaches top_p [R]. Ties at the cut are all kept."""
    vocab_size = probs.shape[1]
    k = torch.where(top_k > 0, top_k, vocab_size).clamp(max=vocab_size)  # [R]
    mass = probs.sum(-1)  # [R] what top_p renormalises by when top_k is off (< 1 after min_p)
    num_candidates = min(vocab_size, max(_NUM_CANDIDATES, int(top_k.max())))
    threshold, decided = _cutoff(probs.topk(num_candidates, dim=-1).values, k, top_p, mass)  # [R], [R]
    inactive = (top_k == 0) & (top_p >= 1)  # [R] rows sharing the batch with filtered ones
    # The nucleus can outgrow the candidates (a flat distribution): sort those rows fully.
    rest = torch.nonzero(~decided & ~inactive).flatten()  # [r]
    if rest.numel():
        full = _sort_descending(probs[rest])  # [r, V]
        threshold[rest] = _cutoff(full, k[rest], top_p[rest], mass[rest])[0]
    probs.masked_fill_(probs < threshold.masked_fill(inactive, 0)[:, None], 0)


def _cutoff(sorted_probs, k, top_p, mass) -> tuple[torch.Tensor, torch.Tensor]:
    """From each row's most likely n probabilities [r, n] (descending): the smallest kept
    probability [r], and whether these n columns decide it [r] (top_k binds within them,
    or top_p stops before the last column)."""
    num_columns = sorted_probs.shape[1]
    rank = torch.arange(num_columns, device=sorted_probs.device)  # [n]
    kept = sorted_probs.masked_fill(rank >= k[:, None], 0)  # [r, n] after top_k
    mass = torch.where(k <= num_columns, kept.sum(-1), mass)  # [r]
    above = kept.cumsum(-1) - kept  # [r, n] mass of the more likely columns
    # top_p == 1 keeps all: cumsum rounding must not drop the smallest survivors.
    in_nucleus = (above < top_p[:, None] * mass[:, None]) | (top_p[:, None] >= 1)  # [r, n]
    num_kept = (in_nucleus & (kept > 0)).sum(-1).clamp(min=1)  # [r]; a prefix, so a count
    threshold = sorted_probs.gather(1, (num_kept - 1)[:, None]).squeeze(1)  # [r]
    return threshold, (k <= num_columns) | (num_kept < num_columns)


def _sort_descending(x: torch.Tensor) -> torch.Tensor:
    # torch's CPU sort is 10-25x slower than numpy's SIMD sort of plain float32 values.
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=-1)[:, ::-1].copy())
    return x.sort(dim=-1, descending=True).values
