"""The search (layer 4): the fewest GPUs, then the lowest $/hour, that serve a request rate
under latency SLOs, over GPU type x TP x quantization x max batch.

Every candidate is checked the same way: the memory plan must fit one request of the
longest length; then one replica is simulated (simulator.py) at its share of the rate
plus `headroom`, and every SLO must hold on the simulated percentiles. Replicas are
added until they do.

The search stays fast by bounds that never prune a better answer: a candidate's replicas
are at least rate / (what one replica could serve if every step were a full decode batch
and prefills cost only their FLOPs), and its latency at least that of a lone request. So
candidates go in order of their lower bound on cost, and the search stops once the next
lower bound exceeds the best plan found. Engine defaults model vLLM V1 (see `Engine`).
"""

import math
from dataclasses import dataclass, field, replace

from ..errors import LlmtoolError, UsageError
from .catalog import GPUSpec, ModelShape
from .memory import MemoryConfig, MemoryPlan, plan_memory
from .simulator import WARMUP_SHARE, Replica, SimResult, simulate
from .slo import LatencySLO
from .step_time import Efficiency, StepBatch, step_time
from .traffic import Traffic, requests

TP_DEGREES = (1, 2, 4, 8)


class CapacityError(LlmtoolError):
    """The model does not fit the hardware asked for (exit 1, with the shortfall)."""


QUANTS = ("bf16", "fp8", "int8", "int4")
MAX_BATCHES = (32, 64, 128, 256)


@dataclass(frozen=True)
class Engine:
    """The serving engine's knobs the plan assumes; defaults are vLLM V1's for online
    serving: chunked prefill with a 2048-token step budget, 256 sequences, 16-token blocks,
    prefix caching on, 90% of device memory."""

    max_num_batched_tokens: int = 2048
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True


@dataclass(frozen=True)
class PlanRequest:
    model: ModelShape
    gpus: tuple[GPUSpec, ...]
    rps: float
    traffic: Traffic  # lengths and prefix; its rate is replaced per replica
    slos: tuple[LatencySLO, ...]
    quants: tuple[str, ...] = QUANTS
    tps: tuple[int, ...] = TP_DEGREES
    max_batches: tuple[int, ...] = MAX_BATCHES
    kv_dtype: str = "bf16"
    headroom: float = 0.2  # plan for rps x (1 + headroom)
    engine: Engine = Engine()
    eff: Efficiency = Efficiency()
    prices: dict = field(default_factory=dict)  # GPU name -> $/hour overriding the catalog

    def __post_init__(self):
        if not (math.isfinite(self.rps) and self.rps > 0):
            raise UsageError(f"--rps must be a positive number, got {self.rps}")
        if not 0 <= self.headroom <= 10:
            raise UsageError(f"headroom must be in [0, 10], got {self.headroom}")

    def price(self, gpu: GPUSpec) -> float:
        return float(self.prices.get(gpu.name, gpu.price_per_hour))


@dataclass(frozen=True)
class Candidate:
    gpu: GPUSpec
    tp: int
    quant: str
    max_batch: int
    memory: MemoryPlan


@dataclass
class Plan:
    candidate: Candidate
    replicas: int
    result: SimResult  # one replica at rps x (1 + headroom) / replicas
    slo_values: dict  # SLO name -> simulated ms
    price_per_hour: float  # all GPUs
    cost_per_1k_tokens: float  # $ per 1K output tokens at the requested rate

    @property
    def total_gpus(self) -> int:
        return self.replicas * self.candidate.tp


@dataclass
class Rejection:
    gpu: str
    tp: int
    quant: str
    max_batch: int | None
    reason: str


@dataclass
class PlanResult:
    request: PlanRequest
    plans: list[Plan]  # feasible, best first
    rejected: list[Rejection]
    num_simulations: int

    @property
    def best(self) -> Plan | None:
        return self.plans[0] if self.plans else None

    def best_per_gpu(self) -> dict[str, Plan | None]:
        return {
            g.name: next((p for p in self.plans if p.candidate.gpu is g), None) for g in self.request.gpus
        }


def plan(req: PlanRequest, progress=None) -> PlanResult:
    """Search every GPU in `req.gpus` (compare mode keeps the best of each)."""
    if not req.slos:
        raise UsageError("give at least one SLO (--ttft-p95, --tpot-p95, --e2e-p95 or --slo-preset)")
    rejected: list[Rejection] = []
    queue: list[tuple[float, int, Candidate]] = []
    for candidate in _candidates(req, rejected):
        bound = _replicas_lower_bound(req, candidate)
        if bound is None:
            rejected.append(_reject(candidate, "a lone request already misses an SLO"))
            continue
        queue.append((_cost(bound * candidate.tp, req.price(candidate.gpu)), bound, candidate))
    queue.sort(key=lambda q: (q[0], q[2].tp, -q[2].max_batch))
    plans: list[Plan] = []
    best_cost: dict[str, float] = {}
    sims = 0
    for done, (cost_bound, bound, candidate) in enumerate(queue):
        if progress:
            progress("searching configurations", done, len(queue))
        if cost_bound >= best_cost.get(candidate.gpu.name, math.inf):  # can at best tie
            continue
        found, n, reason = _fewest_replicas(
            req, candidate, bound, best_cost.get(candidate.gpu.name, math.inf)
        )
        sims += n
        if found is None:
            rejected.append(_reject(candidate, reason))
            continue
        plans.append(found)
        name = candidate.gpu.name
        best_cost[name] = min(
            best_cost.get(name, math.inf), _cost(found.total_gpus, req.price(candidate.gpu))
        )
    if progress:
        progress("searching configurations", len(queue), len(queue))
    plans.sort(key=lambda p: (_cost(p.total_gpus, req.price(p.candidate.gpu)), p.total_gpus, p.candidate.tp))
    return PlanResult(req, plans, rejected, sims)


def predict(req: PlanRequest, gpu: GPUSpec, tp: int, quant: str, max_batch: int, replicas: int = 1) -> Plan:
    """No search: what `replicas` replicas of one pinned configuration do at `req.rps`
    (no headroom added), for checking a plan against a measurement."""
    if replicas < 1:
        raise UsageError(f"replicas must be at least 1, got {replicas}")
    memory = plan_memory(req.model, gpu, _memory_config(req, tp, quant))
    if not memory.fits:
        raise CapacityError(f"{req.model.name} on {gpu.name} at TP {tp} in {quant}: {memory.message}")
    c = Candidate(gpu, tp, quant, max_batch, memory)
    result = simulate_at(req, c, req.rps / replicas)
    values = {s.name: s.value_ms(result) for s in req.slos}
    price = req.price(gpu)
    gpus = replicas * tp
    cost_1k = 1000 * price * gpus / 3600 / (req.rps * req.traffic.output_len)
    return Plan(c, replicas, result, values, price * gpus, cost_1k)


def replica_for(req: PlanRequest, candidate: Candidate) -> Replica:
    return Replica(
        model=req.model,
        gpu=candidate.gpu,
        quant=candidate.quant,
        tp=candidate.tp,
        kv_dtype=req.kv_dtype,
        num_kv_blocks=candidate.memory.num_kv_blocks,
        block_size=req.engine.block_size,
        max_num_seqs=candidate.max_batch,
        max_num_batched_tokens=req.engine.max_num_batched_tokens,
        enable_prefix_caching=req.engine.enable_prefix_caching,
        eff=req.eff,
    )


def simulate_at(req: PlanRequest, candidate: Candidate, rate: float) -> SimResult:
    traffic = replace(req.traffic, rate=rate, concurrency=None)
    # A replayed run is measured whole, as `llmtool bench` measured it (its warm-up requests
    # are already left out of the recording); drawn traffic drops the filling-up start.
    warmup = 0.0 if traffic.trace else WARMUP_SHARE
    return simulate(replica_for(req, candidate), requests(traffic), warmup_share=warmup)


def _candidates(req: PlanRequest, rejected: list[Rejection]):
    for gpu in req.gpus:
        for tp in req.tps:
            for quant in req.quants:
                try:
                    memory = plan_memory(req.model, gpu, _memory_config(req, tp, quant))
                except UsageError as e:  # TP that does not divide the heads
                    rejected.append(Rejection(gpu.name, tp, quant, None, str(e)))
                    continue
                if not memory.fits:
                    rejected.append(Rejection(gpu.name, tp, quant, None, memory.message))
                    continue
                for b in req.max_batches:
                    yield Candidate(gpu, tp, quant, b, memory)


def _memory_config(req: PlanRequest, tp: int, quant: str) -> MemoryConfig:
    return MemoryConfig(
        quant=quant,
        kv_dtype=req.kv_dtype,
        tp=tp,
        gpu_memory_utilization=req.engine.gpu_memory_utilization,
        context_len=req.traffic.max_len,
        max_num_batched_tokens=req.engine.max_num_batched_tokens,
        max_num_seqs=max(req.max_batches),
        block_size=req.engine.block_size,
    )


def _replicas_lower_bound(req: PlanRequest, c: Candidate) -> int | None:
    """Replicas no plan with this candidate can go below, or None when a lone request
    already misses an SLO (no number of replicas helps)."""
    t = req.traffic
    ctx = t.input_len + t.output_len // 2

    def step(batch: StepBatch) -> float:
        return step_time(req.model, c.gpu, c.quant, c.tp, batch, req.eff, req.kv_dtype).total_s

    lone_prefill = sum(
        step(StepBatch.prefilling(min(req.engine.max_num_batched_tokens, t.input_len - done), done))
        for done in range(0, t.input_len, req.engine.max_num_batched_tokens)
    )
    lone_decode = step(StepBatch.decoding(1, ctx))
    lone = {"ttft": lone_prefill, "tpot": lone_decode, "e2e": lone_prefill + (t.output_len - 1) * lone_decode}
    if any(1000 * lone[s.metric] > s.ms for s in req.slos):
        return None
    batch = min(c.max_batch, max(1, c.memory.kv_capacity_tokens // ctx))
    full = step_time(req.model, c.gpu, c.quant, c.tp, StepBatch.decoding(batch, ctx), req.eff, req.kv_dtype)
    prefill_flops = step_time(req.model, c.gpu, c.quant, c.tp, StepBatch.prefilling(t.input_len), req.eff)
    per_request = t.output_len * full.total_s / batch + prefill_flops.compute_s
    return max(1, math.ceil(req.rps * (1 + req.headroom) * per_request))


def _fewest_replicas(req: PlanRequest, c: Candidate, start: int, budget: float):
    """Add replicas from the lower bound until the SLOs hold, while still cheaper than the
    best plan so far. Returns (plan or None, simulations run, why not)."""
    price = req.price(c.gpu)
    target = req.rps * (1 + req.headroom)
    sims, reason = 0, "no replica count under the best plan's cost meets the SLOs"
    replicas = start
    while _cost(replicas * c.tp, price) < budget:
        result = simulate_at(req, c, target / replicas)
        sims += 1
        values = {s.name: s.value_ms(result) for s in req.slos}
        if not result.saturated and all(s.holds(result) for s in req.slos):
            gpus = replicas * c.tp
            tokens_per_s = req.rps * req.traffic.output_len
            cost_1k = 1000 * price * gpus / 3600 / tokens_per_s
            return Plan(c, replicas, result, values, price * gpus, cost_1k), sims, ""
        missed = [f"{s.name} {values[s.name]:.0f} > {s.ms:g}" for s in req.slos if not s.holds(result)]
        reason = f"at {replicas} replicas: " + ("saturated" if result.saturated else ", ".join(missed))
        # Latency that does not fall as load does cannot be bought with replicas.
        if result.mean_batch < 1.5 and not result.saturated:
            break
        # Jump by the overload factor when far off, one at a time when close.
        step = 1
        if result.saturated:
            step = max(1, replicas // 2)
        replicas += step
        if replicas > 64 * start + 64:
            break
    return None, sims, reason


def _cost(gpus: int, price: float) -> float:
    """What the search minimises: $/hour, or GPUs when the GPU has no price."""
    return gpus * price if price > 0 else float(gpus)


def _reject(c: Candidate, reason: str) -> Rejection:
    return Rejection(c.gpu.name, c.tp, c.quant, c.max_batch, reason)
