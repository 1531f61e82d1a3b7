"""Plain-dict views of plans for `--json` and for the CLI's tables (no Rich here)."""

import math

from .planner import Plan, PlanResult
from .step_time import StepBatch, step_time

PERCENTILES = (50, 95, 99)


def plan_dict(p: Plan, req) -> dict:
    c, r = p.candidate, p.result
    rps, output_len = req.rps, req.traffic.output_len
    m = c.memory
    latency = {
        f"{metric}_ms": {f"p{q}": _ms(r.percentile(metric, q)) for q in PERCENTILES}
        for metric in ("ttft", "tpot", "e2e")
    }
    return {
        "gpu": c.gpu.name,
        "tp": c.tp,
        "replicas": p.replicas,
        "total_gpus": p.total_gpus,
        "quant": c.quant,
        "max_batch": c.max_batch,
        "slo_values_ms": {k: _round(v) for k, v in p.slo_values.items()},
        "latency": latency,
        "simulated_rps_per_replica": _round(rps * (1 + req.headroom) / p.replicas),
        "replica_output_tok_s": _round(r.throughput),
        "output_tok_s_per_gpu_at_rps": _round(rps * output_len / p.total_gpus),
        "mean_batch": _round(r.mean_batch),
        # Requests/s per replica whose own latencies all meet the SLO bounds (bench's goodput).
        "goodput_rps_per_replica": _round(
            rps * (1 + req.headroom) / p.replicas * r.share_within({s.metric: s.ms / 1000 for s in req.slos})
        ),
        "preemptions": r.num_preemptions,
        "price_per_hour": _round(p.price_per_hour),
        "cost_per_1k_output_tokens": _round(p.cost_per_1k_tokens, 6),
        "memory": memory_dict(m),
    }


def memory_dict(m) -> dict:
    return {
        "total_gb": _round(m.total_bytes / 1e9),
        "usable_gb": _round(m.usable_bytes / 1e9),
        "weights_gb": _round(m.weight_bytes / 1e9),
        "activations_gb": _round(m.activation_bytes / 1e9),
        "reserve_gb": _round(m.reserve_bytes / 1e9),
        "kv_cache_gb": _round(m.kv_budget_bytes / 1e9),
        "kv_bytes_per_token": m.kv_bytes_per_token,
        "kv_capacity_tokens": m.kv_capacity_tokens,
        "max_full_length_seqs": m.max_num_seqs,
        "fits": m.fits,
        "message": m.message,
    }


def result_dict(res: PlanResult, seconds: float) -> dict:
    req = res.request
    t = req.traffic
    best = res.best
    return {
        "model": req.model.name,
        "rps": req.rps,
        "headroom": req.headroom,
        "traffic": {
            "input_len": t.input_len,
            "output_len": t.output_len,
            "length_dist": t.length_dist,
            "prefix_share": t.prefix_share,
            "simulated_requests": t.num_requests,
        },
        "slos": {s.name: s.ms for s in req.slos},
        "engine": req.engine.__dict__,
        "recommendation": plan_dict(best, req) if best else None,
        "runner_ups": [plan_dict(p, req) for p in res.plans[1:]],
        "per_gpu": {name: plan_dict(p, req) if p else None for name, p in res.best_per_gpu().items()},
        "rejected": [r.__dict__ for r in res.rejected],
        "num_simulations": res.num_simulations,
        "seconds": round(seconds, 2),
    }


def step_breakdown(req, p: Plan) -> list[dict]:
    """Layer 2 for --explain: a decode step at the simulated mean batch and a prefill chunk."""
    c, t = p.candidate, req.traffic
    batch = max(1, round(p.result.mean_batch))
    ctx = t.input_len + t.output_len // 2
    chunk = min(t.input_len, req.engine.max_num_batched_tokens)
    rows = []
    for label, b in (
        (f"decode, {batch} seqs at {ctx} tokens", StepBatch.decoding(batch, ctx)),
        (f"prefill chunk of {chunk} tokens", StepBatch.prefilling(chunk)),
    ):
        s = step_time(req.model, c.gpu, c.quant, c.tp, b, req.eff, req.kv_dtype)
        rows.append(
            {
                "step": label,
                "gb_moved": _round(s.bytes / 1e9),
                "tflop": _round(s.flops / 1e12, 4),
                "memory_ms": _round(1e3 * s.memory_s),
                "compute_ms": _round(1e3 * s.compute_s),
                "allreduce_ms": _round(1e3 * s.allreduce_s),
                "overhead_ms": _round(1e3 * s.overhead_s),
                "total_ms": _round(1e3 * s.total_s),
                "bound": "memory" if s.is_memory_bound else "compute",
            }
        )
    return rows


def _ms(seconds: float) -> float | None:
    return None if not math.isfinite(seconds) else round(1000 * seconds, 2)


def _round(x: float, nd: int = 3) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)
