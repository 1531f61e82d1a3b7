"""Prompt logprobs: the logprob of each prompt token (after the first) under the logits of the
position before it, with its rank and the top-k alternatives, as vLLM's prompt_logprobs.

The rows come from the same forward that fills the KV cache (the runner hands over their hidden
states); they are turned into logits a slice at a time, since a 2048-token chunk of a 49k
vocabulary would be 400 MB of fp32 logits at once. Logprobs are the model's raw ones (no
temperature, penalties or logit_bias), as for sampled tokens.
"""

from collections.abc import Callable

import torch

from .sampler import TokenLogprobs
from .scheduler import SchedulerOutput

_ROWS_PER_SLICE = 256  # logits [256, V] fp32: 50 MB for a 49k vocabulary


@torch.inference_mode()
def score_prompt_rows(
    head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, target_ids: list[int], k: int
) -> list[TokenLogprobs]:
    """hidden [R, h]: row i's logits score target_ids[i]; each with its top k alternatives."""
    out: list[TokenLogprobs] = []
    for lo in range(0, len(target_ids), _ROWS_PER_SLICE):
        logprobs = torch.log_softmax(head(hidden[lo : lo + _ROWS_PER_SLICE]), dim=-1)  # [r, V]
        ids = torch.tensor(target_ids[lo : lo + _ROWS_PER_SLICE], dtype=torch.long, device=logprobs.device)
        chosen = logprobs.gather(1, ids[:, None])  # [r, 1]
        # vLLM's rank: tokens at least as likely, the token itself included (1 = the most likely).
        ranks = (logprobs >= chosen).sum(-1).tolist()  # [r]
        if k:
            top_values, top_ids = (t.tolist() for t in logprobs.topk(k, dim=-1))  # [r, k] each
        else:
            top_values = top_ids = [[] for _ in ranks]
        for value, rank, tv, ti in zip(chosen.squeeze(1).tolist(), ranks, top_values, top_ids, strict=True):
            out.append(TokenLogprobs(value, list(zip(ti, tv, strict=True)), rank))
    return out


def score_prompts(
    out: SchedulerOutput,
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    scored: dict[int, list[TokenLogprobs | None]],
) -> None:
    """A step's prompt-scoring rows [R, h] (entry.prompt_logprob_positions per entry, in
    scheduled order) appended to each sequence's list in `scored`, which advances its count."""
    row = 0
    for entry in out.scheduled:
        positions = entry.prompt_logprob_positions
        if not positions:
            continue
        seq = entry.seq
        if positions.start != seq.num_prompt_logprobs:  # a prefix-cache hit skipped owed positions
            raise RuntimeError(
                f"{seq!r}: prompt logprobs resume at {positions.start}, not {seq.num_prompt_logprobs}"
            )
        targets = seq.token_ids[positions.start + 1 : positions.stop + 1]
        rows = hidden[row : row + len(positions)]
        scored[seq.seq_id].extend(score_prompt_rows(head, rows, targets, seq.params.prompt_logprobs))
        seq.num_prompt_logprobs = positions.stop
        row += len(positions)
