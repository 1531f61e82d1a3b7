"""Greedy generation on a contiguous KV cache: the offline path for checks and the demo.

Not the serving engine (that is core/engine, with paging, batching and sampling); this is
the smallest correct loop over our forward pass, one prompt at a time.
"""

from collections.abc import Callable, Sequence

import torch

from .context import ContiguousKVCache
from .causal_lm import CausalLM


@torch.inference_mode()
def greedy_generate(
    model: CausalLM,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    on_token: Callable[[int], None] | None = None,
) -> list[int]:
    """Argmax decoding; stops after max_new_tokens or on (and including) a stop id."""
    if not prompt_ids:
        raise ValueError("the prompt must have at least one token")
    device = model.device
    cache = ContiguousKVCache(model.spec, 1, len(prompt_ids) + max_new_tokens, model.dtype, device)
    ids = torch.tensor(list(prompt_ids), dtype=torch.long, device=device)
    positions = torch.arange(len(prompt_ids), device=device)
    out: list[int] = []
    for _ in range(max_new_tokens):
        step = cache.step([ids.numel()])
        hidden = model(ids, positions, step)  # [n, h]
        cache.commit([ids.numel()])
        token = int(model.compute_logits(hidden[-1:]).argmax(-1))
        out.append(token)
        if on_token is not None:
            on_token(token)
        if token in stop_ids:
            break
        ids = torch.tensor([token], device=device)
        positions = positions[-1:] + 1
    return out
