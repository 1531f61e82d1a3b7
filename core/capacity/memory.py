"""Memory arithmetic for one GPU of a tensor-parallel group: weights, activations, KV cache.

Pure arithmetic on a ModelShape and a GPUSpec, modelled on how vLLM sizes its KV cache:
budget = memory x gpu_memory_utilization - weights - peak activations - fixed reserve,
cut into blocks of `block_size` tokens. Not a simulator: no timing, no scheduling.

Assumptions, stated once:
- Quantization (`fp8`, `int8`, `int4`) covers the linear layers inside the transformer
  blocks; embeddings, lm_head, norms, biases and the MoE router stay bf16, as GPTQ, AWQ
  and FP8 checkpoints ship them. int4 is GPTQ/AWQ style: 4 bits plus an fp16 scale and a
  4-bit zero point per group of 128 weights = 4.15625 bits per weight. fp8 and int8
  per-tensor or per-channel scales are under 0.1% and left out.
- Tensor parallelism splits attention heads, MLP (and every expert's MLP) columns, and the
  vocabulary (embeddings and lm_head) evenly. KV heads split too, but never below one per
  GPU: with fewer KV heads than GPUs each KV head (its cache and its k/v weights) is
  replicated, as vLLM does.
- Activations: the peak of one forward over `max_num_batched_tokens` tokens, layers run one
  at a time, bf16: tokens x 2 bytes x (4 x hidden + (q + 2 kv) / tp + 3 x intermediate x
  experts_per_token / tp) (residual, norm output, attention in/out; gate, up and their
  product), plus fp32 logits for `max_num_seqs` rows of the full vocabulary.
- Weights: every parameter, all experts of an MoE (counted from the spec by
  core/models/counts.py), whatever the family (qk-norms, sandwich norms, biases, router).
- KV cache: per token, each layer's K and V for its KV heads; a sliding-window layer (Gemma 2/3,
  Mistral-7B-v0.1) holds only its last W tokens, so at `context_len` it counts
  min(W, context_len) / context_len of a full layer (vLLM's hybrid KV cache manager frees a
  windowed layer's blocks once they fall out of the window). `kv_bytes_per_token` is that
  average over a full `context_len` sequence, rounded up: shorter sequences hold more per token
  on windowed layers, so capacity is exact for sequences of `context_len`, approximate otherwise.
- `reserve_bytes` (1 GiB by default) covers the CUDA context, cuBLAS and NCCL workspaces
  and CUDA graphs, which vLLM also takes out of the budget.
"""

import math
from dataclasses import dataclass

from ..errors import UsageError
from ..models import counts
from .catalog import GPUSpec, ModelShape

# Bits per weight for the quantized linear layers (see the module docstring for int4).
WEIGHT_BITS = {"bf16": 16.0, "fp16": 16.0, "fp8": 8.0, "int8": 8.0, "int4": 4.0 + (16 + 4) / 128}
KV_BYTES = {"bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}
GB = 1e9


@dataclass(frozen=True)
class MemoryConfig:
    quant: str = "bf16"  # weight format of the linear layers, one of WEIGHT_BITS
    kv_dtype: str = "bf16"  # one of KV_BYTES
    tp: int = 1  # tensor-parallel GPUs per replica
    gpu_memory_utilization: float = 0.9  # share of device memory the engine may use
    context_len: int | None = None  # tokens per sequence; None = the model's max context
    max_num_batched_tokens: int = 8192  # tokens in the largest forward (sets activations)
    max_num_seqs: int = 256  # rows of logits at once
    block_size: int = 16  # KV cache tokens per block
    reserve_bytes: int = 1 << 30  # CUDA context, workspaces, graphs


@dataclass(frozen=True)
class MemoryPlan:
    model: str
    gpu: str
    config: MemoryConfig
    context_len: int  # tokens per sequence the plan is sized for
    total_bytes: int  # device memory of one GPU
    usable_bytes: int  # total x gpu_memory_utilization
    weight_bytes: int  # this GPU's shard of the weights
    activation_bytes: int  # peak activations of one forward
    reserve_bytes: int  # fixed, see MemoryConfig
    kv_budget_bytes: int  # what is left for the KV cache (negative when over)
    kv_heads_per_gpu: int  # at least 1: replicated when kv_heads < tp
    kv_bytes_per_token: (
        int  # this GPU's share of one token's K and V, all layers (windows averaged at context_len)
    )
    num_kv_blocks: int  # KV cache blocks of block_size tokens
    kv_capacity_tokens: int  # num_kv_blocks x block_size
    max_num_seqs: int  # full-length sequences the KV cache holds at once
    fits: bool  # one sequence of context_len fits
    shortfall_bytes: int  # how many more bytes one GPU would need; 0 when it fits

    @property
    def message(self) -> str:
        if self.fits:
            return (
                f"fits: {_gb(self.kv_budget_bytes)} for KV cache = {self.kv_capacity_tokens} tokens, "
                f"{self.max_num_seqs} sequences of {self.context_len} tokens"
            )
        if self.weight_bytes > self.usable_bytes:
            return (
                f"does not fit: needs {_gb(self.weight_bytes)} of weights per GPU, "
                f"{_gb(self.usable_bytes)} available; with activations, reserve and one "
                f"{self.context_len}-token sequence's KV cache it is short {_gb(self.shortfall_bytes)}"
            )
        return (
            f"does not fit: weights {_gb(self.weight_bytes)}, activations {_gb(self.activation_bytes)} and "
            f"reserve {_gb(self.reserve_bytes)} of {_gb(self.usable_bytes)} leave {_gb(self.kv_budget_bytes)} "
            f"for the KV cache; one {self.context_len}-token sequence needs "
            f"{_gb(self.kv_bytes_per_token * self.context_len)} (short {_gb(self.shortfall_bytes)})"
        )


def plan_memory(model: ModelShape, gpu: GPUSpec, config: MemoryConfig = MemoryConfig()) -> MemoryPlan:
    _check(model, config)
    tp = config.tp
    context_len = config.context_len or model.max_context
    total = gpu.memory_bytes
    usable = int(total * config.gpu_memory_utilization)
    weights = weight_bytes_per_gpu(model, config.quant, tp)
    activations = activation_bytes(model, config)
    budget = usable - weights - activations - config.reserve_bytes
    kv_heads = kv_heads_per_gpu(model, tp)
    per_token = math.ceil(
        counts.kv_bytes_per_token(model.spec, KV_BYTES[config.kv_dtype], context_len, kv_heads)
    )
    block_bytes = per_token * config.block_size
    num_blocks = max(budget, 0) // block_bytes
    blocks_per_seq = math.ceil(context_len / config.block_size)
    fits = num_blocks >= blocks_per_seq
    return MemoryPlan(
        model=model.name,
        gpu=gpu.name,
        config=config,
        context_len=context_len,
        total_bytes=total,
        usable_bytes=usable,
        weight_bytes=weights,
        activation_bytes=activations,
        reserve_bytes=config.reserve_bytes,
        kv_budget_bytes=budget,
        kv_heads_per_gpu=kv_heads,
        kv_bytes_per_token=per_token,
        num_kv_blocks=num_blocks,
        kv_capacity_tokens=num_blocks * config.block_size,
        max_num_seqs=num_blocks // blocks_per_seq,
        fits=fits,
        # Exact: the budget falls short of one sequence's blocks by this much.
        shortfall_bytes=0 if fits else blocks_per_seq * block_bytes - budget,
    )


def kv_heads_per_gpu(model: ModelShape, tp: int) -> int:
    return max(1, model.num_kv_heads // tp)


def weight_bytes_per_gpu(model: ModelShape, quant: str, tp: int) -> int:
    """One GPU's shard of ALL the weights (every expert of an MoE: they all sit in memory):
    quantized linears plus the bf16 rest, counted by core.models.counts from the spec."""
    spec = model.spec
    h, layers = spec.hidden_size, spec.num_layers
    q = spec.q_size
    kv = kv_heads_per_gpu(model, tp) * spec.head_dim  # this GPU's k (or v) width
    attn = h * q // tp + 2 * h * kv + q * h // tp
    mlp = counts.num_experts(spec) * counts.expert_params(spec) // tp
    quantized = layers * (attn + mlp)
    # The bf16 rest: whatever the family has beyond the linears (norms, biases, qk-norms, router),
    # replicated, plus the embeddings and lm_head, split over the vocabulary.
    embed = counts.embedding_params(spec)
    rest = counts.count_params(spec) - counts.linear_params(spec) - embed
    return math.ceil(quantized * WEIGHT_BITS[quant] / 8) + 2 * (embed // tp + rest)


def activation_bytes(model: ModelShape, config: MemoryConfig) -> int:
    """Peak activations of one forward; the formula is in the module docstring."""
    tp, h = config.tp, model.hidden_size
    qkv = model.num_heads * model.head_dim // tp + 2 * kv_heads_per_gpu(model, tp) * model.head_dim
    mlp = 3 * model.spec.mlp_intermediate_size // tp  # top_k experts' width for an MoE
    per_token = 2 * (4 * h + qkv + mlp)
    logits = config.max_num_seqs * model.vocab_size * 4
    return config.max_num_batched_tokens * per_token + logits


def _check(model: ModelShape, config: MemoryConfig) -> None:
    if config.quant not in WEIGHT_BITS:
        raise UsageError(f"unknown quantization '{config.quant}': valid are {', '.join(WEIGHT_BITS)}")
    if config.kv_dtype not in KV_BYTES:
        raise UsageError(f"unknown KV dtype '{config.kv_dtype}': valid are {', '.join(KV_BYTES)}")
    if not 0 < config.gpu_memory_utilization <= 1:
        raise UsageError(f"gpu_memory_utilization must be in (0, 1], got {config.gpu_memory_utilization}")
    tp, kv = config.tp, model.num_kv_heads
    if tp < 1 or model.num_heads % tp:
        raise UsageError(f"TP {tp} does not divide {model.name}'s {model.num_heads} attention heads")
    # Either the KV heads split evenly, or each is replicated on a whole number of GPUs.
    if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
        raise UsageError(f"TP {tp} and {model.name}'s {kv} KV heads do not divide one another")
    if min(config.max_num_batched_tokens, config.max_num_seqs, config.block_size) < 1:
        raise UsageError("max_num_batched_tokens, max_num_seqs and block_size must be positive")
    if config.context_len is not None and config.context_len < 1:
        raise UsageError(f"context length must be positive, got {config.context_len}")


def _gb(num_bytes: int) -> str:
    return f"{num_bytes / GB:.1f} GB"
