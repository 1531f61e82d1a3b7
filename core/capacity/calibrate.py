"""Calibration: fit the step-time model's efficiency factors and overheads to a measured
`llmtool bench --json` run, so plans for that hardware predict what it really does.

The bench run is replayed through the simulator request for request (same arrival times
or concurrency, same prompt and output lengths), and Nelder-Mead moves four numbers,
memory and compute efficiency, per-step and per-sequence overhead, until the simulated
TTFT and TPOT (p50, p95) and output throughput match the measured ones in log space.
The peaks they scale are measured on this machine by `probe` (or given), so the fitted
efficiencies stay shares of a real ceiling.

Not here: the bench run itself, or storing the result (profiles.py).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from .catalog import GPUSpec, ModelShape
from .simulator import Replica, SimResult, simulate
from .step_time import Efficiency
from .traffic import from_bench

# Several quantiles of each, not just the tail: a p95 of one run rests on a few requests.
TARGETS = tuple((m, p) for m in ("ttft", "tpot") for p in (50, 75, 90, 95))
# Nelder-Mead starting points: memory and compute efficiency, step and per-sequence overhead (s).
STARTS = ((0.5, 0.3, 1e-3, 1e-4), (0.5, 0.9, 1e-3, 5e-4))


@dataclass(frozen=True)
class Calibration:
    eff: Efficiency
    measured: dict  # target name -> value (ms, or tok/s for throughput)
    predicted: dict  # same keys, simulated with the fitted factors
    rms_log_error: float  # over the targets
    num_simulations: int


def measured_targets(bench: dict) -> dict:
    records = [r for r in bench.get("records", []) if not r.get("error") and r.get("first_token") is not None]
    if len(records) < 8:
        raise UsageError(
            f"calibration needs at least 8 completed requests in the bench results, got {len(records)}"
        )
    ttft = [r["first_token"] - r["scheduled"] for r in records]
    tpot = []
    for r in records:
        n = r.get("output_tokens") or sum(r.get("chunk_tokens") or [])
        if n and n > 1 and r.get("end") is not None:
            tpot.append((r["end"] - r["first_token"]) / (n - 1))
    if not tpot:
        raise UsageError("the bench results hold no request with two or more output tokens")
    values = {"ttft": ttft, "tpot": tpot}
    out = {f"{m}_p{p}_ms": 1000 * float(np.percentile(values[m], p)) for m, p in TARGETS}
    tokens = sum(r.get("output_tokens") or sum(r.get("chunk_tokens") or []) for r in records)
    span = max(r["end"] for r in records) - min(r["scheduled"] for r in records)
    out["output_throughput"] = tokens / span
    return out


def predicted_targets(result: SimResult) -> dict:
    out = {f"{m}_p{p}_ms": 1000 * result.percentile(m, p) for m, p in TARGETS}
    out["output_throughput"] = result.throughput
    return out


def calibrate(
    bench: dict,
    model: ModelShape,
    hardware: GPUSpec,
    replica: Replica,
    progress: Callable[[str, int, int], None] | None = None,
    max_evals: int = 240,
) -> Calibration:
    """Fit `replica.eff` (its other fields are the engine the bench ran) to `bench`."""
    load = (bench.get("config") or {}).get("load") or {}
    concurrency = load.get("concurrency")
    reqs = from_bench(bench.get("records", []))
    measured = measured_targets(bench)
    base = Replica(**{**replica.__dict__, "model": model, "gpu": hardware})
    evals = 0

    def run(x: np.ndarray) -> tuple[SimResult, Efficiency]:
        eff = _eff(x)
        # The bench already left its warm-up requests out of the records: measure them all.
        return simulate(Replica(**{**base.__dict__, "eff": eff}), reqs, concurrency, warmup_share=0.0), eff

    def loss(x: np.ndarray) -> float:
        nonlocal evals
        evals += 1
        if progress:
            progress("calibrating", min(evals, max_evals), max_evals)
        result, _ = run(x)
        pred = predicted_targets(result)
        errs = [math.log(max(pred[k], 1e-9) / measured[k]) for k in measured]
        # Efficiencies above 1 would beat the measured peak: penalise leaving (0, 1].
        over = sum(max(0.0, v) ** 2 for v in x[:2])
        return float(np.mean(np.square(errs))) + 10 * over

    # Log space keeps every factor positive.
    # Two starts, best kept: one compute-poor (small GEMMs, as a decode batch runs them) and one
    # near peak (large prefill GEMMs): the fit has a valley on each side on some machines.
    best_x, best_loss = None, math.inf
    for start in STARTS:
        x = _nelder_mead(loss, np.log(start), step=0.7, max_evals=max_evals // len(STARTS))
        value = loss(x)
        if value < best_loss:
            best_x, best_loss = x, value
    x = best_x
    result, eff = run(x)
    pred = predicted_targets(result)
    rms = math.sqrt(np.mean([math.log(pred[k] / measured[k]) ** 2 for k in measured]))
    return Calibration(eff, measured, pred, rms, evals + 1)


def _eff(x: np.ndarray) -> Efficiency:
    mem, comp, step, per_seq = np.exp(x)
    return Efficiency(
        memory=float(min(mem, 1.0)),
        compute=float(min(comp, 1.0)),
        step_overhead_s=float(step),
        per_seq_overhead_s=float(per_seq),
        allreduce_latency_s=0.0,
        link=1.0,
    )


def _nelder_mead(f, x0: np.ndarray, step: float, max_evals: int, tol: float = 1e-5) -> np.ndarray:
    """The downhill simplex (standard coefficients): no gradients, which a simulator lacks."""
    n = len(x0)
    simplex = [x0] + [x0 + step * np.eye(n)[i] for i in range(n)]
    values = [f(x) for x in simplex]
    evals = n + 1
    while evals < max_evals:
        order = np.argsort(values)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if values[-1] - values[0] < tol:
            break
        centroid = np.mean(simplex[:-1], axis=0)
        reflected = centroid + (centroid - simplex[-1])
        fr = f(reflected)
        evals += 1
        if fr < values[0]:
            expanded = centroid + 2 * (centroid - simplex[-1])
            fe = f(expanded)
            evals += 1
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = centroid + 0.5 * (simplex[-1] - centroid)
            fc = f(contracted)
            evals += 1
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:  # shrink towards the best point
                simplex = [simplex[0]] + [simplex[0] + 0.5 * (x - simplex[0]) for x in simplex[1:]]
                values = [values[0]] + [f(x) for x in simplex[1:]]
                evals += n
    return simplex[int(np.argmin(values))]
