"""Speculative decoding's parts, without a model: the acceptance rule keeps the target's
distribution (chi-square on a 6-token vocabulary, fixed seeds, p > 0.001, and the same test
rejects a rule that skips rejection), greedy verification, prompt lookup against a plain
scan, and the scheduler's lookahead slots: drafts never preempt, rejected slots are freed
and never cached, BlockManager invariants hold throughout."""

import random

import pytest
import torch

from llmtool.core.engine.block_manager import BlockManager
from llmtool.core.engine.config import SpeculativeConfig
from llmtool.core.engine.drafter import NgramDrafter, ngram_lookup_reference
from llmtool.core.engine.rejection import verify_greedy, verify_sampled, verify_sampled_reference
from llmtool.core.engine.sampling_params import SamplingParams
from llmtool.core.engine.scheduler import Scheduler, SchedulerConfig
from llmtool.core.engine.sequence import Sequence
from llmtool.core.errors import UsageError

P_MIN = 1e-3  # a correct rule fails a test at this level once in a thousand seeds; ours are fixed
VOCAB = 6
N = 6000


def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's chi-square p-value of observed counts against probabilities (cells with an
    expected count under 5 are pooled into one)."""
    expected = probs * counts.sum()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]]) if small.any() else counts
    exp = torch.cat([expected[~small], expected[small].sum()[None]]) if small.any() else expected
    keep = exp > 0
    if (obs[~keep] > 0).any():
        return 0.0  # a token the target gives no mass was produced
    obs, exp = obs[keep].double(), exp[keep].double()
    stat = ((obs - exp) ** 2 / exp).sum()
    df = torch.tensor(len(obs) - 1, dtype=torch.double)
    return float(torch.special.gammaincc(df / 2, stat / 2))


def _dists(seed: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.softmax(torch.randn(k + 1, VOCAB, generator=g) * 1.5, -1)  # [k+1, V]
    draft = torch.softmax(torch.randn(k, VOCAB, generator=g) * 1.5, -1)  # [k, V]
    target[:, 0] = 0  # a token the target rules out, which the draft likes
    draft[:, 0] = 0.3
    return target / target.sum(-1, keepdim=True), draft / draft.sum(-1, keepdim=True)


def _position_counts(rule, target, draft, point_mass: bool, seed: int) -> list[torch.Tensor]:
    """Per output position j: counts of the token emitted there (over trials that reach j).
    With fixed target rows, the token at j is distributed as target[j] if the rule is right."""
    k = target.shape[0] - 1
    g = torch.Generator().manual_seed(seed)
    counts = [torch.zeros(VOCAB) for _ in range(k + 1)]
    for _ in range(N):
        proposed = torch.multinomial(draft, 1, generator=g).flatten().tolist()  # [k]
        kept = rule(target, proposed, None if point_mass else draft, g)
        for j, token in enumerate(kept):
            counts[j][token] += 1
    return counts


@pytest.mark.parametrize("rule", [verify_sampled, verify_sampled_reference], ids=["vectorised", "reference"])
@pytest.mark.parametrize("point_mass", [False, True], ids=["draft-model", "ngram"])
def test_rejection_sampling_keeps_the_target_distribution(rule, point_mass):
    target, draft = _dists(seed=1, k=2)
    if point_mass:  # any proposal process will do; one close to the target reaches position 2 often
        draft = 0.5 * draft + 0.5 * target[:2]
    counts = _position_counts(rule, target, draft, point_mass, seed=2)
    for j, c in enumerate(counts):
        assert c.sum() > 300, f"position {j} reached too rarely to test"
        p = chi_square_p(c, target[j])
        assert p > P_MIN, f"position {j}: p = {p:.2g}, counts {c.tolist()} vs {target[j].tolist()}"


def test_the_chi_square_test_rejects_a_rule_that_always_accepts():
    def accept_all(target, proposed, draft, g):
        return list(proposed) + [int(torch.multinomial(target[-1], 1, generator=g))]

    target, draft = _dists(seed=1, k=2)
    counts = _position_counts(accept_all, target, draft, False, seed=2)
    assert chi_square_p(counts[0], target[0]) < 1e-9  # the draft's distribution, not the target's


def test_greedy_verification_keeps_the_argmax_run():
    logits = torch.full((4, 8), -1.0)
    logits[0, 3] = logits[1, 5] = logits[2, 7] = logits[3, 1] = 2.0
    assert verify_greedy(logits, [3, 5, 7]) == [3, 5, 7, 1]  # all kept, plus the bonus token
    assert verify_greedy(logits, [3, 4, 7]) == [3, 5]  # first miss: the target's own token
    assert verify_greedy(logits, [0, 5, 7]) == [3]
    assert verify_greedy(logits[:2], [3]) == [3, 5]


def test_ngram_lookup_matches_a_plain_scan():
    rng = random.Random(0)
    drafter = NgramDrafter(ngram_min=2, ngram_max=4)
    for trial in range(40):
        vocab = rng.choice([3, 5, 20])
        ids = [rng.randrange(vocab) for _ in range(rng.randint(1, 12))]
        for _ in range(30):  # grow it token by token: the index is incremental
            ids.append(rng.randrange(vocab))
            got = drafter.lookup(trial, ids, 5)
            assert got == ngram_lookup_reference(ids, 5, 2, 4), ids
    assert drafter.lookup(99, [1, 2, 3, 9, 9, 1, 2, 3], 3) == [9, 9, 1]


def test_speculative_config_rejects_bad_settings():
    assert SpeculativeConfig.parse("ngram", 3).num_speculative_tokens == 3
    assert SpeculativeConfig.parse("draft:some/dir").draft_model == "some/dir"
    for bad in ("foo", "ngram:x", "draft:", "draft"):
        with pytest.raises(UsageError, match="--speculative must be"):
            SpeculativeConfig.parse(bad)
    with pytest.raises(UsageError, match="at least 1"):
        SpeculativeConfig.parse("ngram", 0)
    with pytest.raises(UsageError, match="num_speculative_tokens"):
        SamplingParams(num_speculative_tokens=-1)


# ---- scheduler and block manager with lookahead slots ------------------------------------


def _decoding(scheduler: Scheduler, bm: BlockManager, prompt: list[int], max_tokens: int = 64) -> Sequence:
    seq = Sequence(f"r{prompt[0]}", prompt, SamplingParams(max_tokens=max_tokens, temperature=0))
    scheduler.add(seq)
    out = scheduler.schedule()
    scheduler.update(out, [7 if e.seq is seq else None for e in out.scheduled])
    assert not seq.is_prefilling
    return seq


def test_verified_tokens_advance_the_sequence_and_rejected_slots_are_freed():
    bm = BlockManager(num_blocks=16, block_size=4)
    scheduler = Scheduler(SchedulerConfig(max_model_len=64), bm)
    seq = _decoding(scheduler, bm, [1, 2, 3, 4, 5, 6])  # 7 tokens (one generated), 6 computed
    out = scheduler.schedule({seq.seq_id: [10, 11, 12, 13, 14]})
    (entry,) = out.scheduled
    assert entry.num_new_tokens == 6 and entry.num_logit_rows == 6
    assert entry.input_token_ids() == [7, 10, 11, 12, 13, 14]
    assert len(seq.block_table) == 3  # 12 slots: 7 tokens + 5 drafts
    bm.check_invariants()
    # Two drafts kept, then the target's own token 20 where the third was rejected.
    scheduler.update(out, [[10, 11, 20]])
    assert seq.token_ids[6:] == [7, 10, 11, 20]
    assert seq.num_computed_tokens == 9 == seq.num_tokens - 1
    assert len(seq.block_table) == 3  # 10 tokens need 3 blocks
    bm.check_invariants()
    # Blocks 0 and 1 hold verified tokens only: cached. Block 2 holds position 8 (11) and
    # rejected drafts' slots: not cached, though the draft reached past its end.
    assert bm.num_cached_blocks == 2
    out = scheduler.schedule({seq.seq_id: [30]})
    scheduler.update(out, [[31]])  # rejected at once: one token, the target's
    assert seq.token_ids[-2:] == [20, 31] and seq.num_computed_tokens == seq.num_tokens - 1
    assert bm.num_cached_blocks == 2
    bm.check_invariants()


def test_a_stop_inside_the_verified_run_ends_there():
    bm = BlockManager(num_blocks=16, block_size=4)
    scheduler = Scheduler(SchedulerConfig(max_model_len=64), bm)
    seq = _decoding(scheduler, bm, [1, 2, 3], max_tokens=3)
    out = scheduler.schedule({seq.seq_id: [10, 11, 12, 13]})
    assert out.scheduled[0].draft_token_ids == [10]  # 2 tokens left: one draft + the bonus
    scheduler.update(out, [[10, 11]])
    assert seq.is_finished and seq.output_token_ids == [7, 10, 11]
    assert bm.num_used_blocks == 0
    bm.check_invariants()


def test_drafts_never_preempt_and_leave_blocks_for_the_next_decodes():
    bm = BlockManager(num_blocks=8, block_size=4)
    scheduler = Scheduler(SchedulerConfig(max_model_len=64), bm)
    a = _decoding(scheduler, bm, [1, 2, 3, 4, 5, 6, 7])  # 8 tokens: 2 full blocks
    b = _decoding(scheduler, bm, [9, 8, 7, 6, 5, 4, 3, 2])  # 9 tokens: the 9th needs a 3rd block
    assert bm.num_free_blocks == 4
    out = scheduler.schedule({a.seq_id: list(range(100, 120)), b.seq_id: list(range(50, 60))})
    assert not out.preempted
    drafts = {e.seq.seq_id: e.draft_token_ids for e in out.scheduled}
    assert drafts[a.seq_id] == list(range(100, 112))  # 3 blocks: the 4th free one stays b's
    assert drafts[b.seq_id] == [50, 51, 52]  # b's own new block has 3 slots after its token
    assert bm.num_free_blocks == 0
    bm.check_invariants()
    scheduler.update(out, [[100, 55], [50, 51, 52, 53]])
    assert a.num_computed_tokens == a.num_tokens - 1 and len(a.block_table) == 3
    assert b.num_computed_tokens == b.num_tokens - 1 and len(b.block_table) == 3
    assert bm.num_free_blocks == 2
    bm.check_invariants()


def test_adaptive_k_drafts_what_pays():
    from llmtool.core.engine.spec_decode import best_k

    assert best_k(0.95, 8, 0.1) == 8  # copying: draft all the way
    assert 2 <= best_k(0.6, 8, 0.1) <= 4
    assert best_k(0.05, 8, 0.1) == 0  # drafts that are nearly always rejected cost more than they give
    assert best_k(0.05, 8, 0.0) >= 1  # free verification: drafting always pays a little
