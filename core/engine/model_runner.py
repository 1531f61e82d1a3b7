"""ModelRunner: one forward pass over every scheduled token, packed, on the paged KV cache.

The cache is one preallocated tensor [layers, 2, num_blocks, block_size, Hk, D]; a step
writes each new token's K/V to its slot and attention reads keys through block tables
(kernels.paged_attention). Only the rows that sample produce logits: a decode's last row, or
every row of an entry verifying k drafted tokens (k + 1 rows, its last token then the drafts),
always in fp32 (LogitsHead). Rows whose logits score prompt tokens (prompt_logprobs) come back
as hidden states, for the engine to score a slice at a time.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from ...kernels import PagedAttentionPlan, paged_attention, plan_paged_attention, write_kv
from ..models.causal_lm import CausalLM
from ..models.context import layer_attention
from .logits_head import LogitsHead, head_weight
from .scheduler import SchedulerOutput


@dataclass
class ForwardOutput:
    logits: torch.Tensor  # [S, V] fp32: entry.num_logit_rows rows per entry, in scheduled order
    prompt_hidden: (
        torch.Tensor | None
    )  # [R, h]: len(entry.prompt_logprob_positions) rows per entry; None if R = 0


class PagedContext:
    """AttentionContext for one step: write this step's K/V, attend through block tables.
    Layers with different windows (Gemma's local and global) read through different plans."""

    def __init__(
        self,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
        plans: dict[int | None, PagedAttentionPlan],
        layers: list[tuple[float, int | None, float | None]],
    ):
        self.kv_cache = kv_cache  # [L, 2, num_blocks, block_size, Hk, D]
        self.slot_mapping = slot_mapping  # [N]
        self.plans = plans  # window -> gather indices, shared by all layers with that window
        self.layers = layers  # (scale, window, softcap) per layer

    def attend(self, layer_idx, q, k, v):
        k_cache, v_cache = self.kv_cache[layer_idx, 0], self.kv_cache[layer_idx, 1]
        write_kv(k_cache, v_cache, k, v, self.slot_mapping, has_padding=False)
        scale, window, softcap = self.layers[layer_idx]
        return paged_attention(q, k_cache, v_cache, self.plans[window], scale, softcap)


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """On CPU through calloc (numpy's zeros): the OS hands over zeroed pages as they are first
    touched, so a multi-GiB cache costs nothing at start-up instead of a memset of all of it."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    raw = np.zeros(math.prod(shape) * dtype.itemsize, dtype=np.uint8)
    return torch.from_numpy(raw).view(dtype).view(shape)


class ModelRunner:
    def __init__(self, model: CausalLM, num_blocks: int, block_size: int, fp32_logits: bool = True):
        spec = model.spec
        weight = head_weight(model)  # before prepare_for_inference packs it
        self.model = model.prepare_for_inference()
        self.head = LogitsHead(self.model, weight, fp32_logits)
        self.block_size = block_size
        self.num_blocks = num_blocks
        shape = (spec.num_layers, 2, num_blocks, block_size, spec.num_kv_heads, spec.head_dim)
        # zeros, not empty: never-written slots must hold finite values (masked, but 0 * NaN = NaN).
        self.kv_cache = _zeros(shape, model.dtype, model.device)
        self.layers = layer_attention(spec)
        self.windows = sorted(set(spec.windows), key=lambda w: -1 if w is None else w)

    @torch.inference_mode()
    def run(self, out: SchedulerOutput) -> ForwardOutput:
        """Forward the step: the sampling rows' fp32 logits and the prompt-scoring rows' hidden states."""
        bs = self.block_size
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        cu_seqlens_q = [0]
        seq_lens: list[int] = []
        sample_rows: list[int] = []
        prompt_rows: list[int] = []
        for entry in out.scheduled:
            seq, start, n = entry.seq, entry.start, entry.num_new_tokens
            input_ids += entry.input_token_ids()
            positions += range(start, start + n)
            table = seq.block_table
            slots += [table[p // bs] * bs + p % bs for p in range(start, start + n)]
            cu_seqlens_q.append(cu_seqlens_q[-1] + n)
            seq_lens.append(start + n)
            end = cu_seqlens_q[-1]
            sample_rows += range(end - entry.num_logit_rows, end)
            prompt_rows += (cu_seqlens_q[-2] + p - start for p in entry.prompt_logprob_positions)
        device = self.model.device
        width = max(len(e.seq.block_table) for e in out.scheduled)
        tables = [e.seq.block_table + [0] * (width - len(e.seq.block_table)) for e in out.scheduled]
        table_t = torch.tensor(tables, dtype=torch.long, device=device)  # [B, max_blocks]
        plans = {w: plan_paged_attention(table_t, cu_seqlens_q, seq_lens, bs, w) for w in self.windows}
        ctx = PagedContext(self.kv_cache, torch.tensor(slots, dtype=torch.long, device=device), plans, self.layers)
        ids = torch.tensor(input_ids, dtype=torch.long, device=device)  # [N]
        pos = torch.tensor(positions, dtype=torch.long, device=device)  # [N]
        hidden = self.model(ids, pos, ctx)  # [N, h]
        if sample_rows:
            logits = self.head(hidden[sample_rows])  # [S, V]
        else:
            logits = hidden.new_empty(0, self.model.spec.vocab_size, dtype=torch.float32)
        return ForwardOutput(logits, hidden[prompt_rows] if prompt_rows else None)

    def wipe_blocks(self, block_ids: list[int]) -> None:
        """Zero blocks whose K/V may be garbage (a failed request's): reads of masked slots
        multiply them by 0, and 0 * NaN would leak into whoever gets the block next."""
        self.kv_cache[:, :, block_ids] = 0

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy K/V of whole blocks (src -> dst) for forked sequences' partial last blocks."""
        for src, dst in pairs:
            self.kv_cache[:, :, dst] = self.kv_cache[:, :, src]
