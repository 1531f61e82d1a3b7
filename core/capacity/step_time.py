"""How long one engine step takes on one GPU of a tensor-parallel group: a roofline model.

A step is one forward over what continuous batching put together: chunks of prompt being
prefilled and sequences decoding one token each. Its time is

    total = max(bytes / (bandwidth x eff), flops / (peak x eff)) + TP all-reduce + overhead

with every number per GPU (TP splits weights, heads and FLOPs). This is layer 2 of the
planner; it knows nothing of queues or arrivals (the simulator drives it step by step),
and it reads the byte arithmetic of the weights from `memory`.

Assumptions, stated once:
- Every weight of this GPU's shard is read once per step (`memory.weight_bytes_per_gpu`,
  the input embedding table included although a lookup only touches a few rows: that
  overstates bytes by the table, 6.5% for Llama-3.1-8B, 3% for 70B in fp8).
- MoE: weights in memory are all E experts, but a step reads only the routed ones. Each
  token routes to k of E experts uniformly and independently, so n tokens hit
  E x (1 - (1 - k/E)^n) distinct experts per layer on average; only those experts' weights
  are read. Trained routers are skewed, which hits fewer: this is the upper end. TP slices
  every expert, so the fraction is the same on every GPU.
- KV: decode reads each sequence's cached context and writes one token; a prefill chunk
  reads the context cached before it (earlier chunks, prefix-cache hits) and writes its own
  tokens. A sliding-window layer (Gemma 2/3, Mistral-7B-v0.1) reads at most its last W tokens
  and its attention sees at most W keys per query. Activations are not counted as traffic (fused kernels keep them on chip in decode;
  prefill is compute-bound anyway).
- FLOPs: 2 x active non-embedding params x tokens for the linears, 2 x vocab x hidden per
  logit row (one row per sequence in the step, as vLLM computes logits only for each
  sequence's last token), and attention 2 x 2 x layers x heads x head_dim per (query, key)
  pair: QK^T and PV. Prefill is causal, so n new tokens after c cached see n x c + n(n+1)/2.
- Peaks: the quantized linears run at the quant's dense peak (bf16, fp8, int8; int4 is
  weight-only and computes in bf16; fp8 falls back to bf16 on parts without FP8, as
  weight-only FP8 kernels such as Marlin do); attention, lm_head and router run in bf16.
- Roofline per step, not per op: a step is counted memory-bound or compute-bound as a
  whole, which flatters steps that mix both; the efficiency factors absorb that.
- TP all-reduce: two per layer (after attention, after the MLP), ring algorithm: each costs
  a latency plus 2 x (tp - 1)/tp x tokens x hidden x 2 bytes over the link. The embedding
  all-reduce and the logits gather are left out (one call each per step).
"""

from dataclasses import dataclass

from ..errors import UsageError
from ..models import counts
from .catalog import GPUSpec, ModelShape
from .memory import KV_BYTES, WEIGHT_BITS, kv_heads_per_gpu, weight_bytes_per_gpu

ACTIVATION_BYTES = 2  # bf16 hidden states on the wire


@dataclass(frozen=True)
class Efficiency:
    """Shares of datasheet peaks a real engine reaches. Defaults are common rules of thumb
    (REFERENCE.md "Capacity planning"); calibration replaces them with fitted values."""

    memory: float = 0.8  # of HBM bandwidth: large GEMV kernels reach 80-90%
    compute: float = 0.6  # of dense tensor-core peak: large GEMMs reach 60-75%
    step_overhead_s: float = 1e-3  # scheduling, sampling, launches: vLLM's ~0.5-2 ms per step
    # Host work per sequence in the step (sampling, detokenizing, streaming). GPU engines hide
    # it behind the GPU (0); a CPU engine pays it on the same cores, so calibration fits it.
    per_seq_overhead_s: float = 0.0
    allreduce_latency_s: float = 10e-6  # one small NCCL / custom all-reduce on NVLink
    link: float = 0.7  # of link bandwidth: NCCL bus bandwidth is 70-80% of peak

    def __post_init__(self):
        shares = (self.memory, self.compute, self.link)
        if not all(0 < s <= 1 for s in shares):
            raise UsageError(f"efficiencies must be in (0, 1], got {shares}")
        if min(self.step_overhead_s, self.per_seq_overhead_s, self.allreduce_latency_s) < 0:
            raise UsageError("step overheads and all-reduce latency must not be negative")


# Pure roofline: datasheet peaks, no fixed costs. A lower bound on any real step.
ROOFLINE = Efficiency(memory=1.0, compute=1.0, step_overhead_s=0.0, allreduce_latency_s=0.0, link=1.0)


@dataclass(frozen=True)
class StepBatch:
    """What one engine step computes: continuous batching mixes prefill chunks and decodes."""

    prefill: tuple[tuple[int, int], ...] = ()  # (new tokens, tokens already cached) per prefilling sequence
    decode_context: tuple[int, ...] = ()  # tokens already cached, per decoding sequence

    @classmethod
    def decoding(cls, num_seqs: int, context_len: int) -> "StepBatch":
        return cls(decode_context=(context_len,) * num_seqs)

    @classmethod
    def prefilling(cls, num_tokens: int, cached: int = 0) -> "StepBatch":
        return cls(prefill=((num_tokens, cached),))

    @property
    def num_tokens(self) -> int:
        return sum(n for n, _ in self.prefill) + len(self.decode_context)

    @property
    def num_seqs(self) -> int:
        return len(self.prefill) + len(self.decode_context)


@dataclass(frozen=True)
class StepTime:
    """One step on one GPU, broken down so --explain can show where the time goes."""

    weight_bytes: float  # weights read (MoE: only the experts hit)
    kv_read_bytes: float  # cached K and V the step's attention reads
    kv_write_bytes: float  # K and V of the step's new tokens
    linear_flops: float  # quantized linears, at the quant's peak
    bf16_flops: float  # attention, lm_head, router: always bf16
    experts_hit: float  # expected distinct experts per layer (1 for dense)
    peak_flops: float  # peak used for the linears
    is_peak_fallback: bool  # fp8 asked for, the GPU has none: bf16 peak used
    memory_s: float  # bytes / (bandwidth x eff)
    compute_s: float  # flops / (peak x eff), summed over the two precisions
    allreduce_s: float  # TP all-reduces; 0 at tp=1
    overhead_s: float  # fixed per step, plus the per-sequence host work

    @property
    def bytes(self) -> float:
        return self.weight_bytes + self.kv_read_bytes + self.kv_write_bytes

    @property
    def flops(self) -> float:
        return self.linear_flops + self.bf16_flops

    @property
    def roofline_s(self) -> float:
        return max(self.memory_s, self.compute_s)

    @property
    def is_memory_bound(self) -> bool:
        return self.memory_s >= self.compute_s

    @property
    def total_s(self) -> float:
        return self.roofline_s + self.allreduce_s + self.overhead_s


def step_time(
    model: ModelShape,
    gpu: GPUSpec,
    quant: str,
    tp: int,
    batch: StepBatch,
    eff: Efficiency = Efficiency(),
    kv_dtype: str = "bf16",
) -> StepTime:
    _check(model, quant, kv_dtype, tp, batch)
    tokens = batch.num_tokens
    h, layers = model.hidden_size, model.num_layers

    spec = model.spec
    kv_heads = kv_heads_per_gpu(model, tp)

    # Bytes. Every weight is in memory (all experts); a step reads only the experts its tokens hit.
    expert = counts.expert_params(spec) // tp  # one expert, one layer, this GPU
    hit = expected_experts_hit(model, tokens)
    unread = layers * (model.num_experts - hit) * expert * WEIGHT_BITS[quant] / 8
    weights = weight_bytes_per_gpu(model, quant, tp) - unread * model.is_moe
    kv_bytes = KV_BYTES[kv_dtype]
    # KV read: each sequence's cached context, a windowed layer only its last W tokens.
    cached = [c for _, c in batch.prefill] + list(batch.decode_context)
    kv_read = sum(counts.kv_cached_bytes(spec, kv_bytes, c, kv_heads) for c in cached)
    kv_write = counts.kv_bytes_per_token(spec, kv_bytes, kv_heads=kv_heads) * tokens  # every layer writes

    # FLOPs. Active linears: attention projections plus k experts (or the one dense MLP).
    q = spec.q_size
    kv = kv_heads * spec.head_dim  # replicated below one KV head per GPU
    attn_params = 2 * h * q // tp + 2 * h * kv
    active = layers * (attn_params + model.num_experts_per_tok * expert)
    linear = 2 * active * tokens
    heads = spec.num_heads // tp
    attention = sum(counts.attention_flops(spec, c, n, heads) for n, c in batch.prefill)
    attention += sum(counts.attention_flops(spec, c, 1, heads) for c in batch.decode_context)
    lm_head = 2 * model.vocab_size // tp * h * batch.num_seqs
    router = 2 * counts.router_params(spec) * tokens
    other = attention + lm_head + router

    peak, is_fallback = linear_peak(gpu, quant)
    memory_s = (weights + kv_read + kv_write) / (gpu.hbm_bandwidth * eff.memory)
    compute_s = (linear / peak + other / gpu.bf16_flops) / eff.compute
    return StepTime(
        weight_bytes=weights,
        kv_read_bytes=kv_read,
        kv_write_bytes=kv_write,
        linear_flops=linear,
        bf16_flops=other,
        experts_hit=hit,
        peak_flops=peak,
        is_peak_fallback=is_fallback,
        memory_s=memory_s,
        compute_s=compute_s,
        allreduce_s=allreduce_time(model, gpu, tp, tokens, eff),
        overhead_s=eff.step_overhead_s + eff.per_seq_overhead_s * batch.num_seqs,
    )


def expected_experts_hit(model: ModelShape, num_tokens: int) -> float:
    """Distinct experts per layer that `num_tokens` uniform top-k routings touch on average:
    E x (1 - (1 - k/E)^B) (counts.expected_experts_hit); 1 for a dense model."""
    return counts.expected_experts_hit(model.spec, num_tokens)


def linear_peak(gpu: GPUSpec, quant: str) -> tuple[float, bool]:
    """Dense peak the quantized linears run at, and whether fp8 fell back to bf16."""
    if quant == "fp8":
        return (gpu.bf16_flops, True) if gpu.fp8_flops is None else (gpu.fp8_flops, False)
    if quant == "int8":
        return gpu.int8_ops, False
    return gpu.bf16_flops, False  # bf16, fp16, and int4 (weight-only: dequantized to bf16)


def allreduce_time(model: ModelShape, gpu: GPUSpec, tp: int, num_tokens: int, eff: Efficiency) -> float:
    """Two ring all-reduces of the step's hidden states per layer."""
    if tp == 1:
        return 0.0
    wire = 2 * (tp - 1) / tp * num_tokens * model.hidden_size * ACTIVATION_BYTES
    one = eff.allreduce_latency_s + wire / (gpu.link_bandwidth * eff.link)
    return 2 * model.num_layers * one


def _check(model: ModelShape, quant: str, kv_dtype: str, tp: int, batch: StepBatch) -> None:
    if quant not in WEIGHT_BITS:
        raise UsageError(f"unknown quantization '{quant}': valid are {', '.join(WEIGHT_BITS)}")
    if kv_dtype not in KV_BYTES:
        raise UsageError(f"unknown KV dtype '{kv_dtype}': valid are {', '.join(KV_BYTES)}")
    if tp < 1 or model.num_heads % tp:
        raise UsageError(f"TP {tp} does not divide {model.name}'s {model.num_heads} attention heads")
    if batch.num_tokens == 0:
        raise UsageError("an engine step needs at least one token")
    if any(n < 1 or c < 0 for n, c in batch.prefill) or any(c < 0 for c in batch.decode_context):
        raise UsageError("prefill chunks need at least one token and context lengths must not be negative")
