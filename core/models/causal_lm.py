"""CausalLM: every registered family's forward, built from its ModelSpec and names.

Tokens of all sequences are packed into one dimension [N] (varlen, no padding), which is
what the engine schedules; attention goes through an AttentionContext (see context.py),
which applies each layer's window, scale and soft-cap. Parameter names match the
checkpoints' so HF weights load and export without renaming.
"""

import torch
from torch import nn

from ...kernels import signed_sin
from ...kernels.linear import PackedLinear
from .layers.decoder import DecoderLayer
from .layers.norm import RMSNorm
from .registry import family
from .rope import RotaryTable
from .spec import ModelSpec


class Backbone(nn.Module):
    """HF's `model.*` submodule: embeddings, decoder layers, final norm."""

    def __init__(self, spec: ModelSpec, names):
        super().__init__()
        # _weight skips nn.Embedding's random init: the loader fills every weight, and on the meta
        # device normal_() imports torch._dynamo, 1.4 s of a server's cold start.
        self.embed_tokens = nn.Embedding(
            spec.vocab_size, spec.hidden_size, _weight=torch.empty(spec.vocab_size, spec.hidden_size)
        )
        self.layers = nn.ModuleList(DecoderLayer(spec, i, names) for i in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.rms_norm_eps, spec.norm_offset)


class CausalLM(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.family = family(spec.family)
        self.model = Backbone(spec, self.family)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        # One table per distinct rotary (Gemma 3: local and global layers differ).
        ropes = [spec.layer_attention(i).rope for i in range(spec.num_layers)]
        self.rotaries = {rope: RotaryTable(rope, spec.head_dim) for rope in dict.fromkeys(ropes)}
        self.layer_ropes = ropes
        self.inference_ready = False

    @property
    def rotary(self) -> RotaryTable:
        """The full-attention layers' table (the only one for most families)."""
        return self.rotaries.get(self.spec.rope) or next(iter(self.rotaries.values()))

    def prepare_for_inference(self) -> "CausalLM":
        """Fuse q/k/v and gate/up, fold norm offsets, pack every projection for the hardware
        (kernels.linear): fewer, faster products. The model is inference-only afterwards (its
        state_dict no longer has HF's names); serving calls this, loading and exporting do
        not. Idempotent."""
        if self.inference_ready:
            return self
        with torch.no_grad():
            for layer in self.model.layers:
                layer.fuse()
            self.model.norm.fold()
            self.lm_head = PackedLinear(self.lm_head.weight)
        self.inference_ready = True
        return self

    def tie_weights(self) -> None:
        if self.spec.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx) -> torch.Tensor:
        """input_ids, positions [N] (all sequences packed) -> final hidden states [N, hidden]."""
        x = self.embed(input_ids)  # [N, h]
        tables = self.rope_tables(positions, x.dtype)
        residual = None
        for layer, rope in zip(self.model.layers, self.layer_ropes, strict=True):
            cos, sin = tables[rope]
            x, residual = layer(x, residual, cos, sin, ctx)
        if residual is None:
            return self.model.norm(x)
        return self.model.norm.add_forward(x, residual)[0]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [N] -> the first layer's input [N, h] (quantize's calibration starts here too)."""
        x = self.model.embed_tokens(input_ids)
        if self.spec.embed_scale != 1.0:
            # As transformers: the scale rounded to the activations' dtype first (Gemma: sqrt(h)).
            x = x * torch.tensor(self.spec.embed_scale, dtype=x.dtype)
        return x

    def rope_tables(self, positions: torch.Tensor, dtype: torch.dtype) -> dict:
        """rope -> (cos, signed sin) [N, D'] for these positions; layer i reads layer_ropes[i]."""
        tables = {}
        for rope, table in self.rotaries.items():
            cos, sin = table.lookup(positions, dtype)  # [N, D'] each
            tables[rope] = (cos, signed_sin(sin))  # once per forward, not per layer
        return tables

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, h] -> fp32 logits [N, vocab]; callers pass only the rows they sample."""
        return self.finish_logits(self.lm_head(hidden).float())

    def finish_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The family's last touch on fp32 logits: Granite's scale, Gemma 2's soft-cap."""
        spec = self.spec
        if spec.logit_scale != 1.0:
            logits = logits * spec.logit_scale
        if spec.final_softcap is not None:
            logits = torch.tanh(logits / spec.final_softcap) * spec.final_softcap
        return logits
