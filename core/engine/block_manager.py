"""BlockManager: the paged KV cache's block allocator, with prefix caching (pure Python, no torch).

It hands out block ids and counts references; it never touches K/V data. The model runner
owns the tensors and is told, through `fork`'s copy pairs, when data must move. Prefix
caching keys each FULL, computed block by a hash chained over every token before it, so a
hit on block i means the whole prefix up to block i matches, as in vLLM v1 and nano-vllm.

A freed block keeps its hash ("cached free"): it stays reusable by a later request with
the same prefix until the allocator pops it for new data, which evicts the hash entry.
The free queue is least-recently-freed first, so the oldest cached data goes first.

It is not the scheduler: it never decides who runs, and it does not track sequences
beyond the hashes it has computed for each (so `cache_full_blocks` stays O(new blocks)).
"""

from collections import OrderedDict
from dataclasses import dataclass

from .sequence import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0  # live sequences whose block table holds this block
    hash: int | None = None  # chained hash while registered in the prefix cache, else None
    token_ids: tuple[int, ...] | None = None  # the tokens behind `hash`: confirms a hit against collisions


def chain_hash(prev_hash: int | None, token_ids: tuple[int, ...]) -> int:
    """Hash of a full block given the hash of the block before it (None for the first)."""
    return hash((prev_hash, token_ids))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int = 16, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        self._block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [Block(i) for i in range(num_blocks)]
        # Keys only: an OrderedDict gives O(1) pop-from-front, append and remove-from-middle.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._hash_to_block: dict[int, int] = {}
        self._seq_hashes: dict[int, list[int]] = {}  # seq_id -> chained hashes of its first full blocks
        self._prefix_queries = 0
        self._prefix_hits = 0

    # ---- admission ---------------------------------------------------------------------

    def can_allocate(self, seq: Sequence) -> bool:
        return self._num_blocks_short(seq, self._match_prefix(seq)[0]) <= 0

    def allocate(self, seq: Sequence) -> None:
        """Give `seq` blocks for all its tokens, reusing the longest cached prefix."""
        if seq.block_table:
            raise ValueError(f"{seq!r} already holds blocks")
        hit_ids, hashes = self._match_prefix(seq)
        if self._num_blocks_short(seq, hit_ids) > 0:
            raise RuntimeError(f"not enough free KV blocks for {seq!r}; check can_allocate first")
        # Claim the hits before popping fresh blocks, or a pop could evict a hit we need.
        for block_id in hit_ids:
            self._take(block_id)
        num_new = seq.num_blocks_needed(self._block_size) - len(hit_ids)
        seq.block_table = hit_ids + [self._pop_free() for _ in range(num_new)]
        num_cached = len(hit_ids) * self._block_size
        seq.num_cached_tokens = seq.num_computed_tokens = num_cached
        if self.enable_prefix_caching:
            self._seq_hashes[seq.seq_id] = hashes
            self._prefix_queries += seq.num_tokens
            self._prefix_hits += num_cached

    def deallocate(self, seq: Sequence, discard: bool = False) -> list[int]:
        """Free seq's blocks. discard: its data is bad (the request failed), so blocks no other
        sequence holds leave the prefix cache; returns those ids, for the runner to wipe."""
        discarded = []
        # Reverse order: tail blocks are the least likely to be shared, so they are evicted first.
        for block_id in reversed(seq.block_table):
            block = self._blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                if discard:
                    self._uncache(block)
                    discarded.append(block_id)
                self._free[block_id] = None
        seq.block_table = []
        seq.num_computed_tokens = 0  # num_cached_tokens stays: it reports what admission got
        self._seq_hashes.pop(seq.seq_id, None)
        return discarded

    # ---- decoding ----------------------------------------------------------------------

    def can_append(self, seq: Sequence, num_lookahead_slots: int = 0) -> bool:
        return self._num_blocks_missing(seq, num_lookahead_slots) <= len(self._free)

    def num_blocks_missing(self, seq: Sequence, num_lookahead_slots: int = 0) -> int:
        """Blocks may_append would take for seq (0 when its table already covers the slots)."""
        return self._num_blocks_missing(seq, num_lookahead_slots)

    def may_append(self, seq: Sequence, num_lookahead_slots: int = 0) -> None:
        """Grow the block table to cover the tokens just appended (one new block at most, in decode),
        plus `num_lookahead_slots` beyond them: speculative decoding writes drafted tokens' K/V there."""
        num_missing = self._num_blocks_missing(seq, num_lookahead_slots)
        if num_missing > len(self._free):
            raise RuntimeError(f"no free KV block to append to {seq!r}; check can_append first")
        seq.block_table.extend(self._pop_free() for _ in range(num_missing))

    def trim(self, seq: Sequence) -> None:
        """Free the lookahead blocks beyond seq's tokens (rejected drafts' slots). They were popped
        fresh and never hashed (only computed, verified blocks are), so they go to the FRONT of
        the free queue: reused first, they evict no cached prefix."""
        num_needed = seq.num_blocks_needed(self._block_size)
        while len(seq.block_table) > num_needed:
            block = self._blocks[seq.block_table.pop()]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block.block_id] = None
                self._free.move_to_end(block.block_id, last=False)

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the seq's full, computed blocks in the prefix cache (those not yet registered)."""
        if not self.enable_prefix_caching:
            return
        hashes = self._seq_hashes.setdefault(seq.seq_id, [])
        num_full = min(seq.num_computed_tokens // self._block_size, len(seq.block_table))
        for index in range(len(hashes), num_full):
            token_ids = tuple(seq.block_tokens(index, self._block_size))
            block_hash = chain_hash(hashes[-1] if hashes else None, token_ids)
            hashes.append(block_hash)
            # Another block already serves this prefix (computed concurrently): keep it, since
            # other sequences may hold it; this copy stays unhashed and is freed as plain data.
            if block_hash not in self._hash_to_block:
                block = self._blocks[seq.block_table[index]]
                block.hash, block.token_ids = block_hash, token_ids
                self._hash_to_block[block_hash] = block.block_id

    # ---- parallel sampling -------------------------------------------------------------

    def can_fork(self, parent: Sequence) -> bool:
        return parent.num_tokens % self._block_size == 0 or len(self._free) >= 1

    def fork(self, parent: Sequence, child: Sequence) -> list[tuple[int, int]]:
        """Share the parent's full blocks with `child`; return (src, dst) block copies to make."""
        if child.block_table or child.token_ids != parent.token_ids:
            raise ValueError(f"{child!r} must hold no blocks and the parent's tokens")
        if len(parent.block_table) != parent.num_blocks_needed(self._block_size):
            raise ValueError(f"{parent!r}: block table does not cover its tokens")
        if not self.can_fork(parent):
            raise RuntimeError(f"no free KV block to fork {parent!r}; check can_fork first")
        num_full = parent.num_tokens // self._block_size
        # Full blocks never change again, so sharing them is safe; the partial last one
        # would be written by both, so the child writes into a copy.
        for block_id in parent.block_table[:num_full]:
            self._take(block_id)
        child.block_table = parent.block_table[:num_full]
        copies = []
        if num_full < len(parent.block_table):
            dst = self._pop_free()
            child.block_table.append(dst)
            copies.append((parent.block_table[-1], dst))
        child.num_computed_tokens = parent.num_computed_tokens
        if self.enable_prefix_caching:
            self._seq_hashes[child.seq_id] = list(self._seq_hashes.get(parent.seq_id, []))
        return copies

    # ---- stats -------------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return len(self._blocks)

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def num_free_blocks(self) -> int:
        """Blocks no sequence holds, cached-free ones included."""
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return len(self._blocks) - len(self._free)

    @property
    def usage(self) -> float:
        return self.num_used_blocks / len(self._blocks)

    @property
    def prefix_queries(self) -> int:
        """Prompt tokens looked up in the prefix cache (vLLM counts tokens, not blocks)."""
        return self._prefix_queries

    @property
    def prefix_hits(self) -> int:
        """Of those, tokens served from the cache."""
        return self._prefix_hits

    @property
    def num_cached_blocks(self) -> int:
        """Blocks registered in the prefix cache, in use or cached-free."""
        return len(self._hash_to_block)

    def check_invariants(self) -> None:
        """Raise AssertionError if the internal state is inconsistent (O(num_blocks))."""
        for block in self._blocks:
            assert block.ref_count >= 0, f"negative ref count on {block}"
            assert (block.ref_count == 0) == (block.block_id in self._free), f"free queue vs {block}"
            if block.hash is not None:
                assert self._hash_to_block.get(block.hash) == block.block_id, f"unregistered {block}"
                assert block.token_ids is not None and len(block.token_ids) == self._block_size
            else:
                assert block.token_ids is None, f"token ids without a hash on {block}"
        assert len(self._free) == sum(b.ref_count == 0 for b in self._blocks)
        for block_hash, block_id in self._hash_to_block.items():
            assert self._blocks[block_id].hash == block_hash, f"stale hash entry for block {block_id}"
        assert self._prefix_hits <= self._prefix_queries

    # ---- internals ---------------------------------------------------------------------

    def _match_prefix(self, seq: Sequence) -> tuple[list[int], list[int]]:
        """Block ids and chained hashes of the longest cached run of seq's leading full blocks."""
        hit_ids: list[int] = []
        hashes: list[int] = []
        if not self.enable_prefix_caching:
            return hit_ids, hashes
        # The last token must run to give logits, and so must positions owed prompt logprobs.
        for index in range(seq.max_prefix_cache_tokens // self._block_size):
            token_ids = tuple(seq.block_tokens(index, self._block_size))
            block_hash = chain_hash(hashes[-1] if hashes else None, token_ids)
            block_id = self._hash_to_block.get(block_hash)
            if block_id is None or self._blocks[block_id].token_ids != token_ids:
                break  # a miss ends the chain: later blocks hash over this one
            hit_ids.append(block_id)
            hashes.append(block_hash)
        return hit_ids, hashes

    def _num_blocks_short(self, seq: Sequence, hit_ids: list[int]) -> int:
        """Free blocks lacking to allocate `seq` given its prefix hits (<= 0: it fits)."""
        # A hit on an in-use block costs nothing; one on a cached-free block uses its queue entry.
        num_in_use_hits = sum(self._blocks[b].ref_count > 0 for b in hit_ids)
        return seq.num_blocks_needed(self._block_size) - num_in_use_hits - len(self._free)

    def _num_blocks_missing(self, seq: Sequence, num_lookahead_slots: int = 0) -> int:
        num_needed = seq.num_blocks_needed(self._block_size, seq.num_tokens + num_lookahead_slots)
        return max(0, num_needed - len(seq.block_table))

    def _take(self, block_id: int) -> None:
        """Add a reference to a block found in the cache (or shared by a fork)."""
        block = self._blocks[block_id]
        if block.ref_count == 0:
            del self._free[block_id]
        block.ref_count += 1

    def _pop_free(self) -> int:
        """The least recently freed block, emptied for new data (its cache entry is evicted)."""
        block_id, _ = self._free.popitem(last=False)
        block = self._blocks[block_id]
        self._uncache(block)
        block.ref_count = 1
        return block_id

    def _uncache(self, block: Block) -> None:
        if block.hash is not None:
            del self._hash_to_block[block.hash]
            block.hash = block.token_ids = None
