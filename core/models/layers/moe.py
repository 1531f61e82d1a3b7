"""The sparse MLP (Mixtral, Qwen3-MoE): a router picks top_k experts per token.

The router runs in fp32 and is never quantized (its logits decide which weights a token
reads). Tokens are grouped by expert: one product per active expert over all the rows routed
to it, so the Python loop is over experts (at most num_experts), never over tokens; experts
are ordered as transformers adds them, so fp32 outputs match it exactly.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import ModelSpec
from .mlp import MLP


class SparseMoE(nn.Module):
    def __init__(self, spec: ModelSpec, expert_names: tuple[str, str, str]):
        super().__init__()
        moe = spec.moe
        self.top_k, self.renormalize = moe.top_k, moe.renormalize
        self.gate = nn.Linear(spec.hidden_size, moe.num_experts, bias=False)  # the router
        self.experts = nn.ModuleList(
            MLP(spec, intermediate_size=moe.intermediate_size, names=expert_names) for _ in range(moe.num_experts)
        )

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, h] -> (weights [N, k] in x's dtype, expert ids [N, k])."""
        logits = F.linear(x.float(), self.gate.weight.float())  # [N, E] fp32
        weights, ids = logits.softmax(-1).topk(self.top_k, dim=-1)  # [N, k]
        if self.renormalize:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights.to(x.dtype), ids

    def fuse(self) -> None:
        for expert in self.experts:
            expert.fuse()

    def forward(self, x):
        weights, ids = self.route(x)
        out = torch.zeros_like(x)  # [N, h]
        for e in torch.unique(ids).tolist():  # sorted: the order transformers adds experts in
            rows, slot = torch.nonzero(ids == e, as_tuple=True)  # [R] each
            y = self.experts[e](x[rows]) * weights[rows, slot, None]  # [R, h]
            out.index_add_(0, rows, y)
        return out
