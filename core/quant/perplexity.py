"""Perplexity of our model on token windows: exp(mean negative log-likelihood of each next
token), every window scored on its own from its first token (no context carried over). Logits
are fp32 accumulations in every dtype (the engine's LogitsHead), so a served model's prompt
logprobs give the same figure."""

import math

import torch
import torch.nn.functional as F

from ..engine.logits_head import LogitsHead, head_weight
from ..models.context import PrefillContext
from ..models.causal_lm import CausalLM
from ..progress import ProgressFn, no_progress


@torch.inference_mode()
def perplexity(
    model: CausalLM,
    windows: list[list[int]],
    *,
    task: str = "perplexity",
    progress: ProgressFn = no_progress,
) -> float:
    if not windows:
        return math.nan
    nll, count = 0.0, 0
    head = LogitsHead(model, head_weight(model))
    progress(task, 0, len(windows))
    for i, window in enumerate(windows, 1):
        ids = torch.tensor(window, device=model.device)
        hidden = model(ids, torch.arange(len(window), device=model.device), PrefillContext([len(window)], model.spec))
        logits = head(hidden[:-1])  # [T-1, vocab] fp32
        nll += float(F.cross_entropy(logits, ids[1:], reduction="sum"))
        count += len(window) - 1
        progress(task, i, len(windows))
    return math.exp(nll / count)
