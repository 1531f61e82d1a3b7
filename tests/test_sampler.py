"""Sampler: penalties and filters against transformers' processors, the sampled distribution
against softmax(logits / T), per-request seeds independent of the batch, logprobs."""

import math
import random

import pytest
import torch
from transformers import (
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from llmtool.core.engine.sampler import (
    Sampler,
    apply_min_p,
    apply_penalties,
    apply_top_k_top_p,
)
from llmtool.core.engine.sampling_params import SamplingParams
from llmtool.core.engine.sequence import Sequence

EOS = 2


def seq(prompt=(5, 6, 7), outputs=(), **params) -> Sequence:
    s = Sequence("r", list(prompt), SamplingParams(**params), eos_token_ids=(EOS,))
    for t in outputs:
        s.append_token(t)
    return s


def random_logits(rows: int, vocab: int, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale  # [B, V]


def kept(probs: torch.Tensor) -> set[int]:
    return set(torch.nonzero(probs > 0).flatten().tolist())


def hf_kept(scores: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(scores)).flatten().tolist())


# ----------------------------------------------------------------------------- greedy and penalties


def test_greedy_is_argmax_alone_and_beside_sampled_rows():
    logits = random_logits(6, 1000)
    sampler = Sampler(1000)
    assert (
        sampler.sample(logits, [seq(temperature=0) for _ in range(6)]).token_ids == logits.argmax(-1).tolist()
    )
    mixed = [seq(temperature=0) if i % 2 else seq(temperature=1.0, seed=i) for i in range(6)]
    got = sampler.sample(logits, mixed).token_ids
    assert got[1::2] == logits[1::2].argmax(-1).tolist()


def test_sample_leaves_logits_untouched_and_checks_shape():
    logits = random_logits(2, 50)
    before = logits.clone()
    seqs = [seq(outputs=(1, 1), repetition_penalty=1.5, frequency_penalty=1, min_tokens=4), seq(min_p=0.1)]
    Sampler(50).sample(logits, seqs)
    assert torch.equal(logits, before)
    with pytest.raises(ValueError):
        Sampler(51).sample(logits, seqs)


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_matches_transformers(penalty):
    vocab = 64
    seqs = [
        seq(prompt=(3, 4, 4), outputs=(9, 10, 3), repetition_penalty=penalty),
        seq(prompt=(1,), repetition_penalty=1.0, frequency_penalty=0.5),  # no repetition penalty
        seq(prompt=tuple(range(20, 40)), outputs=(63, 0), repetition_penalty=penalty),
    ]
    logits = random_logits(3, vocab)
    ours = logits.clone()
    apply_penalties(ours, seqs)
    for row in (0, 2):
        ids = torch.tensor([seqs[row].token_ids])
        ref = RepetitionPenaltyLogitsProcessor(penalty)(ids, logits[row : row + 1].clone())
        torch.testing.assert_close(ours[row], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(ours[1], logits[1])  # frequency penalty with no outputs yet: nothing


def test_frequency_and_presence_penalties_count_output_tokens_only():
    logits = torch.zeros(2, 16)  # [B, V]
    seqs = [
        seq(prompt=(9, 9, 5), outputs=(5, 5, 7), frequency_penalty=0.5, presence_penalty=0.25),
        seq(prompt=(9,), outputs=(5,)),  # no penalties: untouched
    ]
    apply_penalties(logits, seqs)
    expected = torch.zeros(16)
    expected[5] = -(2 * 0.5 + 0.25)  # twice in the output; the prompt's 5 does not count
    expected[7] = -(0.5 + 0.25)  # 9 sits in the prompt only: no penalty
    assert torch.equal(logits[0], expected)
    assert torch.equal(logits[1], torch.zeros(16))


def test_min_tokens_masks_eos_and_stop_ids():
    logits = torch.zeros(1, 16)
    logits[0, EOS], logits[0, 7], logits[0, 4] = 10.0, 9.0, 1.0  # EOS, then the stop id, are favourites
    sampler = Sampler(16)
    params = dict(min_tokens=2, stop_token_ids=(7,))
    assert sampler.sample(logits, [seq(temperature=0, **params)]).token_ids == [4]
    assert sampler.sample(logits, [seq(outputs=(4,), temperature=0, **params)]).token_ids == [4]
    assert sampler.sample(logits, [seq(outputs=(4, 4), temperature=0, **params)]).token_ids == [EOS]
    sampled = sampler.sample(logits.expand(200, 16), [seq(seed=i, **params) for i in range(200)]).token_ids
    assert not {EOS, 7} & set(sampled)


# ----------------------------------------------------------------------------- filters vs transformers

# Peaked logits keep the nucleus among the top candidates; flat ones force the full sort.
LOGIT_SCALES = {"peaked": 4.0, "flat": 0.5}


@pytest.mark.parametrize("scale", LOGIT_SCALES.values(), ids=LOGIT_SCALES.keys())
def test_top_k_top_p_min_p_match_transformers(scale):
    vocab = 1000
    logits = random_logits(1, vocab, scale=scale, seed=1)  # [1, V]
    probs = torch.softmax(logits, dim=-1)
    ids = torch.zeros(1, 1, dtype=torch.long)
    cases = [(k, 1.0) for k in (1, 5, 300, vocab)] + [(0, p) for p in (0.1, 0.5, 0.9, 0.99)]
    cases += [(300, 0.9), (20, 0.5)]  # top_p renormalises over what top_k kept
    for k, p in cases:
        ours = probs.clone()
        apply_top_k_top_p(ours, torch.tensor([k]), torch.tensor([p]))
        ref = logits.clone()
        if k:
            ref = TopKLogitsWarper(k)(ids, ref)
        if p < 1:
            ref = TopPLogitsWarper(p)(ids, ref)
        assert kept(ours[0]) == hf_kept(ref[0]), (k, p)
    for min_p in (0.01, 0.2, 0.9):
        ours = probs.clone()
        apply_min_p(ours, torch.tensor([min_p]))
        assert kept(ours[0]) == hf_kept(MinPLogitsWarper(min_p)(ids, logits.clone())[0]), min_p


def test_filters_are_per_row():
    """One call over rows with different settings keeps, per row, what each setting alone keeps."""
    vocab = 500
    settings = [(0, 1.0), (7, 1.0), (0, 0.8), (50, 0.6), (0, 1.0)]
    logits = random_logits(len(settings), vocab, scale=2.0, seed=2)
    probs = torch.softmax(logits, dim=-1)
    batch = probs.clone()
    apply_top_k_top_p(batch, torch.tensor([k for k, _ in settings]), torch.tensor([p for _, p in settings]))
    for row, (k, p) in enumerate(settings):
        alone = probs[row : row + 1].clone()
        apply_top_k_top_p(alone, torch.tensor([k]), torch.tensor([p]))
        assert kept(batch[row]) == kept(alone[0]), row
    assert kept(batch[0]) == set(range(vocab))


def test_sampled_tokens_stay_in_the_kept_set():
    logits = random_logits(1, 300, scale=1.0).expand(400, 300)
    top3 = set(logits[0].topk(3).indices.tolist())
    seqs = [seq(seed=i, top_k=3, temperature=2.0) for i in range(400)]
    assert set(Sampler(300).sample(logits, seqs).token_ids) == top3


# ----------------------------------------------------------------------------- the draw


@pytest.mark.parametrize("temperature", [0.7, 1.5])
def test_sampled_frequencies_follow_softmax_over_temperature(temperature):
    """Chi-square over 20,000 seeded draws: deterministic, so it cannot flake."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.5, 0.2]])  # [1, 8]
    num_seqs, num_steps = 4000, 5
    sampler = Sampler(8)
    seqs = [seq(seed=i, temperature=temperature) for i in range(num_seqs)]
    counts = torch.zeros(8)
    for _ in range(num_steps):
        counts += torch.bincount(
            torch.tensor(sampler.sample(logits.expand(num_seqs, 8), seqs).token_ids), minlength=8
        )
    expected = torch.softmax(logits[0] / temperature, dim=-1) * num_seqs * num_steps
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 24.32, chi_square  # the 0.999 quantile with 7 degrees of freedom


def test_a_seeded_request_ignores_its_batch():
    """Same seed, same logits: same tokens alone or among other requests, at any row."""
    steps = 8
    own_logits = [random_logits(1, 2000, scale=1.0, seed=100 + i)[0] for i in range(steps)]
    params = dict(seed=1234, temperature=0.9, top_p=0.95, repetition_penalty=1.2, logprobs=2)

    def run(batch_size: int) -> list[int]:
        sampler, rng = Sampler(2000), random.Random(batch_size)
        me = seq(**params)
        others = [
            seq(temperature=0),
            seq(top_k=5),
            seq(seed=1234, temperature=1.3),  # the same seed in another request is its own stream
            seq(min_p=0.1, frequency_penalty=1.0),
        ][: batch_size - 1]
        for step in range(steps):
            batch = others + [me]
            rng.shuffle(batch)
            logits = random_logits(len(batch), 2000, seed=1000 * batch_size + step)
            logits[batch.index(me)] = own_logits[step]
            out = sampler.sample(logits, batch)
            for s, token in zip(batch, out.token_ids, strict=True):
                s.append_token(token)
        return me.output_token_ids

    alone = run(1)
    assert run(3) == alone
    assert run(5) == alone


def test_different_seeds_differ_and_release_restarts_the_stream():
    logits = random_logits(1, 1000, scale=0.5)
    sampler = Sampler(1000)
    a, b = seq(seed=1), seq(seed=2)
    stream_a = [sampler.sample(logits, [a]).token_ids[0] for _ in range(10)]
    stream_b = [sampler.sample(logits, [b]).token_ids[0] for _ in range(10)]
    assert stream_a != stream_b
    sampler.release(a.seq_id)
    assert sampler.sample(logits, [a]).token_ids[0] == stream_a[0]
    # Unseeded requests get distinct seeds from the sampler's own generator.
    c, d = seq(), seq()
    assert [sampler.sample(logits, [c]).token_ids[0] for _ in range(10)] != [
        sampler.sample(logits, [d]).token_ids[0] for _ in range(10)
    ]


# ----------------------------------------------------------------------------- logprobs


def test_logprobs_come_from_the_raw_logits():
    logits = random_logits(3, 400)
    seqs = [
        seq(outputs=(1, 2), logprobs=5, temperature=0.5, repetition_penalty=2.0, top_k=10, seed=0),
        seq(logprobs=0, temperature=0),
        seq(temperature=0),
    ]
    out = Sampler(400).sample(logits, seqs)
    raw = torch.log_softmax(logits, dim=-1)  # [B, V]
    first, second, third = out.logprobs
    assert math.isclose(first.logprob, float(raw[0, out.token_ids[0]]), rel_tol=1e-6)
    values, ids = raw[0].topk(5)
    assert [t for t, _ in first.top] == ids.tolist()
    assert [v for _, v in first.top] == pytest.approx(values.tolist(), rel=1e-6)
    assert [v for _, v in first.top] == sorted((v for _, v in first.top), reverse=True)
    assert second.top == [] and math.isclose(second.logprob, float(raw[1].max()), rel_tol=1e-6)
    assert third is None
