"""BlockManager: a stateful property test against a simulated KV store, plus unit tests.

The state machine keeps its own model of what each physical block slot holds (the whole
token prefix that produced that slot's K/V, since attention makes K/V depend on every
earlier token). Every computed token of every live sequence must be found there, so a
wrong prefix hit, an evicted block served as cached, or a shared block overwritten shows
up as a mismatch, independently of the manager's own bookkeeping.
"""

import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from llmtool.core.engine import block_manager as bm_module
from llmtool.core.engine.block_manager import BlockManager, chain_hash
from llmtool.core.engine.sampling_params import SamplingParams
from llmtool.core.engine.sequence import Sequence

PARAMS = SamplingParams()
VOCAB = 3  # tiny, so unrelated prompts still collide on whole blocks now and then
# Prompts are a prefix of one of these plus a random tail: shared prefixes, hence hits.
BASES = [[random.Random(i).randrange(VOCAB) for _ in range(24)] for i in range(3)]


def new_seq(token_ids: list[int]) -> Sequence:
    return Sequence("r", token_ids, PARAMS)


def prefix_hashes(seq: Sequence, block_size: int, num_blocks: int) -> list[int]:
    hashes: list[int] = []
    for i in range(num_blocks):
        hashes.append(chain_hash(hashes[-1] if hashes else None, tuple(seq.block_tokens(i, block_size))))
    return hashes


class BlockManagerMachine(RuleBasedStateMachine):
    @initialize(
        num_blocks=st.integers(1, 32),
        block_size=st.sampled_from([1, 2, 4]),
        enable_prefix_caching=st.booleans(),
    )
    def setup(self, num_blocks, block_size, enable_prefix_caching):
        self.bm = BlockManager(num_blocks, block_size, enable_prefix_caching)
        self.bs = block_size
        self.seqs: dict[int, Sequence] = {}
        self.history: list[list[int]] = []  # prompts and computed prefixes seen so far
        self.kv: dict[tuple[int, int], tuple[int, ...]] = {}  # (block, slot) -> prefix it was computed from

    def _pick(self, index: int) -> Sequence:
        return list(self.seqs.values())[index % len(self.seqs)]

    def _write(self, seq: Sequence, start: int, stop: int) -> None:
        """The model runner computing K/V for positions [start, stop) of `seq`."""
        for p in range(start, stop):
            self.kv[seq.block_table[p // self.bs], p % self.bs] = tuple(seq.token_ids[: p + 1])

    @rule(
        base=st.integers(0, len(BASES) - 1),
        prefix_len=st.integers(0, 24),
        tail=st.lists(st.integers(0, VOCAB - 1), max_size=5),
    )
    def allocate(self, base, prefix_len, tail):
        self._admit(BASES[base][:prefix_len] + tail or [0])

    @precondition(lambda self: self.history)
    @rule(
        index=st.integers(0, 100), cut=st.integers(0, 8), tail=st.lists(st.integers(0, VOCAB - 1), max_size=3)
    )
    def allocate_again(self, index, cut, tail):
        """A request repeating (part of) an earlier one, as chat turns and shared system prompts do."""
        earlier = self.history[index % len(self.history)]
        self._admit(earlier[: max(1, len(earlier) - cut)] + tail)

    def _admit(self, token_ids: list[int]) -> None:
        self.history.append(token_ids)
        seq = new_seq(token_ids)
        if not self.bm.can_allocate(seq):
            with pytest.raises(RuntimeError):
                self.bm.allocate(seq)
            assert seq.block_table == []
            return
        self.bm.allocate(seq)
        cached = seq.num_cached_tokens
        assert cached == seq.num_computed_tokens and cached % self.bs == 0 and cached < seq.num_tokens
        assert self.bm.enable_prefix_caching or cached == 0
        self.seqs[seq.seq_id] = seq

    @precondition(lambda self: self.seqs)
    @rule(index=st.integers(0, 100), token=st.integers(0, VOCAB - 1))
    def append(self, index, token):
        seq = self._pick(index)
        seq.append_token(token)
        if self.bm.can_append(seq):
            self.bm.may_append(seq)
        else:
            with pytest.raises(RuntimeError):
                self.bm.may_append(seq)
            self.bm.deallocate(seq)  # what the scheduler does: preempt it
            del self.seqs[seq.seq_id]

    @precondition(lambda self: self.seqs)
    @rule(index=st.integers(0, 100), fraction=st.floats(0, 1))
    def compute(self, index, fraction):
        seq = self._pick(index)
        done = seq.num_computed_tokens
        target = done + round(fraction * (seq.num_tokens - done))  # a chunk of prefill, or all of it
        self._write(seq, done, target)
        seq.num_computed_tokens = target
        self.bm.cache_full_blocks(seq)
        if target:
            self.history.append(seq.token_ids[:target])

    @precondition(lambda self: self.seqs)
    @rule(index=st.integers(0, 100))
    def deallocate(self, index):
        seq = self._pick(index)
        self.bm.deallocate(seq)
        assert seq.block_table == [] and seq.num_computed_tokens == 0
        del self.seqs[seq.seq_id]

    @precondition(lambda self: self.seqs)
    @rule(index=st.integers(0, 100))
    def fork(self, index):
        parent = self._pick(index)
        if not self.bm.can_fork(parent):
            return
        child = new_seq(parent.token_ids)
        copies = self.bm.fork(parent, child)
        num_full = parent.num_tokens // self.bs
        assert child.block_table[:num_full] == parent.block_table[:num_full]
        assert len(copies) == (parent.num_tokens % self.bs != 0)
        for src, dst in copies:
            assert dst == child.block_table[-1] and dst not in parent.block_table
            for slot in range(self.bs):
                if (src, slot) in self.kv:
                    self.kv[dst, slot] = self.kv[src, slot]
        self.seqs[child.seq_id] = child

    @invariant()
    def manager_is_consistent(self):
        self.bm.check_invariants()

    @invariant()
    def ref_counts_match_block_tables(self):
        refs = Counter(b for seq in self.seqs.values() for b in seq.block_table)
        blocks = self.bm._blocks
        assert sum(b.ref_count for b in blocks) == sum(refs.values())
        assert all(b.ref_count == refs[b.block_id] for b in blocks)
        free = list(self.bm._free)
        assert len(free) == len(set(free)) and set(free) == {b.block_id for b in blocks if b.ref_count == 0}
        assert self.bm.num_free_blocks + self.bm.num_used_blocks == self.bm.num_blocks
        assert 0.0 <= self.bm.usage <= 1.0

    @invariant()
    def block_tables_cover_tokens(self):
        for seq in self.seqs.values():
            assert len(seq.block_table) == seq.num_blocks_needed(self.bs)

    @invariant()
    def computed_tokens_are_in_their_blocks(self):
        for seq in self.seqs.values():
            for p in range(seq.num_computed_tokens):
                assert self.kv.get((seq.block_table[p // self.bs], p % self.bs)) == tuple(
                    seq.token_ids[: p + 1]
                ), f"{seq!r}: wrong K/V at position {p}"

    @invariant()
    def shared_blocks_hold_the_same_tokens_at_the_same_index(self):
        seen: dict[int, tuple[int, list[int]]] = {}
        for seq in self.seqs.values():
            for i, block_id in enumerate(seq.block_table):
                first = seen.setdefault(block_id, (i, seq.block_tokens(i, self.bs)))
                assert first == (i, seq.block_tokens(i, self.bs)), f"block {block_id} shared unequally"

    @invariant()
    def cached_blocks_hold_their_keys_prefix(self):
        for block_hash, block_id in self.bm._hash_to_block.items():
            prefix = self.kv[block_id, self.bs - 1]  # the slot's K/V came from this whole prefix
            assert len(prefix) % self.bs == 0
            assert tuple(prefix[-self.bs :]) == self.bm._blocks[block_id].token_ids
            owner = new_seq(list(prefix))
            assert prefix_hashes(owner, self.bs, len(prefix) // self.bs)[-1] == block_hash
            assert all((block_id, s) in self.kv for s in range(self.bs))

    def teardown(self):
        if not hasattr(self, "bm"):
            return
        for seq in list(self.seqs.values()):
            self.bm.deallocate(seq)
        self.bm.check_invariants()
        assert self.bm.num_free_blocks == self.bm.num_blocks and self.bm.num_used_blocks == 0
        assert all(b.ref_count == 0 for b in self.bm._blocks)


BlockManagerMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_block_manager_state_machine = BlockManagerMachine.TestCase


# ---- unit tests ----------------------------------------------------------------------


def allocate_and_compute(bm: BlockManager, token_ids: list[int]) -> Sequence:
    seq = new_seq(token_ids)
    assert bm.can_allocate(seq)
    bm.allocate(seq)
    seq.num_computed_tokens = seq.num_tokens
    bm.cache_full_blocks(seq)
    return seq


def test_second_request_with_same_64_token_prefix_reuses_4_blocks():
    bm = BlockManager(num_blocks=32, block_size=16)
    prefix = list(range(64))
    first = allocate_and_compute(bm, prefix + [100, 101, 102])
    second = new_seq(prefix + [200, 201])
    bm.allocate(second)
    assert second.num_cached_tokens == second.num_computed_tokens == 64
    assert second.block_table[:4] == first.block_table[:4]
    assert second.block_table[4] != first.block_table[4]
    assert bm.num_used_blocks == 6


def test_exact_multiple_prompt_leaves_its_last_block_to_compute():
    bm = BlockManager(num_blocks=32, block_size=16)
    first = allocate_and_compute(bm, list(range(64)))
    second = new_seq(list(range(64)))
    bm.allocate(second)
    assert second.num_cached_tokens == 48
    assert second.block_table[:3] == first.block_table[:3]
    assert second.block_table[3] != first.block_table[3]


def test_lru_evicts_the_least_recently_freed_prefix_first():
    bm = BlockManager(num_blocks=3, block_size=4)
    a = allocate_and_compute(bm, [1] * 4 + [9])
    bm.deallocate(a)
    b = allocate_and_compute(bm, [2] * 4 + [9])
    bm.deallocate(b)
    assert bm.num_cached_blocks == 2 and bm.num_free_blocks == 3
    bm.allocate(new_seq([3]))  # one block of new data: takes the oldest free block, a's
    assert bm.num_cached_blocks == 1
    probe_a, probe_b = new_seq([1] * 4 + [9]), new_seq([2] * 4 + [9])
    bm.allocate(probe_b)
    assert probe_b.num_cached_tokens == 4
    bm.deallocate(probe_b)
    assert bm.can_allocate(probe_a)
    bm.allocate(probe_a)
    assert probe_a.num_cached_tokens == 0


def test_deallocate_frees_tail_blocks_first_so_the_prefix_survives():
    bm = BlockManager(num_blocks=4, block_size=4)
    prompt = list(range(12)) + [99]  # 3 full blocks + 1 partial
    seq = allocate_and_compute(bm, prompt)
    bm.deallocate(seq)
    other = new_seq([50] * 5)
    bm.allocate(other)  # two blocks of new data: evict the partial block and block 2
    bm.deallocate(other)
    again = new_seq(prompt)
    bm.allocate(again)
    assert again.num_cached_tokens == 8


def test_hits_on_cached_free_blocks_after_the_first_sequence_left():
    bm = BlockManager(num_blocks=8, block_size=4)
    first = allocate_and_compute(bm, list(range(10)))
    old_table = list(first.block_table)
    bm.deallocate(first)
    assert bm.num_free_blocks == 8 and bm.num_used_blocks == 0 and bm.num_cached_blocks == 2
    second = new_seq(list(range(10)))
    bm.allocate(second)
    assert second.num_cached_tokens == 8
    assert second.block_table[:2] == old_table[:2]
    assert bm.num_free_blocks == 5
    bm.check_invariants()


def test_prefix_caching_disabled_gives_no_hits():
    bm = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=False)
    first = allocate_and_compute(bm, list(range(20)))
    second = new_seq(list(range(20)))
    bm.allocate(second)
    assert second.num_cached_tokens == 0 and second.num_computed_tokens == 0
    assert not set(first.block_table) & set(second.block_table)
    assert bm.num_cached_blocks == bm.prefix_queries == bm.prefix_hits == 0


def test_fork_with_a_partial_last_block_returns_one_copy():
    bm = BlockManager(num_blocks=8, block_size=16)
    parent = allocate_and_compute(bm, list(range(20)))
    child = new_seq(parent.token_ids)
    assert bm.can_fork(parent)
    copies = bm.fork(parent, child)
    assert copies == [(parent.block_table[1], child.block_table[1])]
    assert child.block_table[0] == parent.block_table[0]
    assert child.num_computed_tokens == 20
    assert bm.num_used_blocks == 3
    bm.deallocate(parent)
    assert bm.num_used_blocks == 2  # the shared block lives on for the child
    bm.deallocate(child)
    assert bm.num_used_blocks == 0
    bm.check_invariants()


def test_fork_of_full_blocks_only_shares_and_copies_nothing():
    bm = BlockManager(num_blocks=2, block_size=4)
    parent = allocate_and_compute(bm, list(range(8)))
    assert bm.num_free_blocks == 0 and bm.can_fork(parent)
    child = new_seq(parent.token_ids)
    assert bm.fork(parent, child) == []
    assert child.block_table == parent.block_table


def test_can_fork_is_false_without_a_block_for_the_partial_copy():
    bm = BlockManager(num_blocks=2, block_size=4)
    parent = allocate_and_compute(bm, list(range(6)))
    assert not bm.can_fork(parent)
    with pytest.raises(RuntimeError):
        bm.fork(parent, new_seq(parent.token_ids))


def test_can_allocate_is_false_when_blocks_run_out_and_true_after_deallocate():
    bm = BlockManager(num_blocks=4, block_size=4)
    first = allocate_and_compute(bm, list(range(13)))  # 4 blocks
    other = new_seq([7] * 5)
    assert bm.num_free_blocks == 0 and not bm.can_allocate(other)
    with pytest.raises(RuntimeError):
        bm.allocate(other)
    bm.deallocate(first)
    assert bm.can_allocate(other)


def test_hits_on_blocks_in_use_cost_no_free_block():
    bm = BlockManager(num_blocks=6, block_size=4)
    first = allocate_and_compute(bm, list(range(17)))  # 5 blocks, 4 cached
    assert bm.num_free_blocks == 1
    sharer = new_seq(list(range(16)) + [42])  # 5 blocks, but 4 are hits on blocks in use
    assert bm.can_allocate(sharer)
    assert not bm.can_allocate(new_seq(list(range(100, 117))))
    bm.allocate(sharer)
    assert sharer.block_table[:4] == first.block_table[:4] and bm.num_free_blocks == 0


def test_may_append_adds_a_block_only_past_a_block_boundary():
    bm = BlockManager(num_blocks=2, block_size=4)
    seq = allocate_and_compute(bm, [1, 2, 3])
    seq.append_token(4)
    bm.may_append(seq)
    assert len(seq.block_table) == 1
    seq.append_token(5)
    assert bm.can_append(seq)
    bm.may_append(seq)
    assert len(seq.block_table) == 2
    for t in (6, 7, 8):
        seq.append_token(t)
        bm.may_append(seq)
    seq.append_token(9)
    assert not bm.can_append(seq)
    with pytest.raises(RuntimeError):
        bm.may_append(seq)


def test_a_block_computed_twice_keeps_the_first_cache_entry():
    bm = BlockManager(num_blocks=8, block_size=4)
    a, b = new_seq(list(range(5))), new_seq(list(range(5)))
    bm.allocate(a)
    bm.allocate(b)  # before a was computed: no hit, b computes its own copy
    for seq in (a, b):
        seq.num_computed_tokens = seq.num_tokens
        bm.cache_full_blocks(seq)
    assert bm.num_cached_blocks == 1
    probe = new_seq(list(range(5)))
    bm.allocate(probe)
    assert probe.block_table[0] == a.block_table[0]
    bm.check_invariants()


def test_hash_collisions_are_confirmed_by_token_ids(monkeypatch):
    monkeypatch.setattr(bm_module, "chain_hash", lambda prev, tokens: 7)  # every block collides
    bm = BlockManager(num_blocks=8, block_size=4)
    allocate_and_compute(bm, [1, 1, 1, 1, 0])
    other = new_seq([2, 2, 2, 2, 0])
    bm.allocate(other)
    assert other.num_cached_tokens == 0
    same = new_seq([1, 1, 1, 1, 5])
    bm.allocate(same)
    assert same.num_cached_tokens == 4


def test_stats_count_tokens_and_usage():
    bm = BlockManager(num_blocks=10, block_size=4)
    assert (bm.num_blocks, bm.block_size, bm.usage) == (10, 4, 0.0)
    allocate_and_compute(bm, list(range(10)))  # 3 blocks, 2 cached
    second = new_seq(list(range(9)) + [50, 51, 52])  # 3 blocks, 2 hits
    bm.allocate(second)
    assert bm.prefix_queries == 22 and bm.prefix_hits == 8
    assert bm.num_cached_blocks == 2
    assert bm.num_used_blocks == 4 and bm.num_free_blocks == 6 and bm.usage == pytest.approx(0.4)
    bm.deallocate(second)
    assert bm.prefix_queries == 22 and bm.num_used_blocks == 3


def test_allocate_rejects_a_sequence_that_already_holds_blocks():
    bm = BlockManager(num_blocks=4, block_size=4)
    seq = allocate_and_compute(bm, [1, 2])
    with pytest.raises(ValueError):
        bm.allocate(seq)


@pytest.mark.parametrize("num_blocks, block_size", [(0, 16), (4, 0)])
def test_bad_sizes_are_rejected(num_blocks, block_size):
    with pytest.raises(ValueError):
        BlockManager(num_blocks, block_size)
