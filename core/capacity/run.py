"""The plan-capacity command's one core entry: flags (frozen) in, a plain dict out.

Builds the model, GPUs, traffic, SLOs and engine from the flags, then either searches
(planner.plan), predicts one pinned configuration (planner.predict), or calibrates a
hardware profile from a bench run (calibrate.calibrate). Rendering is the CLI's.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from .calibrate import calibrate
from .catalog import gpu as find_gpu
from .catalog import model_spec
from .memory import KV_BYTES, WEIGHT_BITS
from .planner import MAX_BATCHES, QUANTS, TP_DEGREES, Engine, PlanRequest, plan, predict
from .profiles import efficiency_for, engine_for, save_profile
from .simulator import Replica
from .slo import DEFAULT_PRESET, LatencySLO, preset
from .step_time import Efficiency
from .summary import memory_dict, plan_dict, result_dict, step_breakdown
from .traffic import Traffic, from_bench


@dataclass(frozen=True)
class PlanArgs:
    rps: float | None
    model: str | None
    gpus: tuple[str, ...]
    gpu_spec: Path | None = None
    input_len: int = 1024
    output_len: int = 128
    length_dist: str = "fixed"
    len_range: float = 0.5
    prefix_share: float = 0.0
    ttft_p95: float | None = None
    tpot_p95: float | None = None
    e2e_p95: float | None = None
    slo_preset: str | None = None
    quants: tuple[str, ...] | None = None
    kv_dtype: str = "bf16"
    max_tp: int = 8
    tps: tuple[int, ...] | None = None
    max_batches: tuple[int, ...] | None = None
    price: float | None = None
    gpu_memory_utilization: float = 0.9
    max_num_batched_tokens: int | None = None
    headroom: float = 0.2
    num_requests: int = 400
    seed: int = 0
    predict: bool = False
    replicas: int = 1
    explain: bool = False
    replay: Path | None = None  # an `llmtool bench --json` run whose requests are simulated


@dataclass(frozen=True)
class CalibrateArgs:
    bench_path: Path
    model: str | None
    profile: str = "cpu-local"
    max_num_seqs: int = 64  # the server's, as it ran the bench
    max_num_batched_tokens: int = 2048
    block_size: int = 16


def run_plan(args: PlanArgs, progress=None) -> dict:
    if args.rps is None and args.replay is None:
        raise UsageError(
            "give --rps (requests per second to plan for), --replay BENCH.json, or --calibrate BENCH.json"
        )
    if args.model is None:
        raise UsageError(
            "give --model: a catalog name (Llama-3.1-70B), an HF config.json or directory, or an alias"
        )
    req = _request(args)
    if args.predict:
        return _predict(args, req)
    res = plan(req, progress)
    data = result_dict(res, 0.0)
    data["slo_source"] = _slo_source(args)
    data["traffic"] = _traffic_dict(args, req.traffic)
    if args.explain and res.best is not None:
        data["explain"] = {"steps": step_breakdown(req, res.best), "simulation": _sim_dict(res.best.result)}
    return data


def _request(args: PlanArgs) -> PlanRequest:
    model = model_spec(args.model)
    gpus = tuple(find_gpu(name, args.gpu_spec) for name in args.gpus)
    quants = tuple(q.lower() for q in (args.quants or QUANTS))
    for q in quants:
        if q not in WEIGHT_BITS or q == "fp16":
            raise UsageError(f"unknown --quant '{q}': valid are {', '.join(QUANTS)}")
    if args.kv_dtype not in KV_BYTES:
        raise UsageError(f"unknown --kv-dtype '{args.kv_dtype}': valid are {', '.join(KV_BYTES)}")
    tps = args.tps or tuple(t for t in TP_DEGREES if t <= args.max_tp)
    if not tps:
        raise UsageError(f"no TP degree of {TP_DEGREES} is within --max-tp {args.max_tp}")
    slos = _slos(args)
    # A calibrated profile brings its own efficiency and engine; catalog GPUs use vLLM defaults.
    profile_engine = engine_for(gpus[0].name) if len(gpus) == 1 else {}
    eff = (efficiency_for(gpus[0].name) if len(gpus) == 1 else None) or Efficiency()
    budget = (
        args.max_num_batched_tokens
        or profile_engine.get("max_num_batched_tokens")
        or Engine().max_num_batched_tokens
    )
    batches = args.max_batches or (
        (profile_engine["max_num_seqs"],) if "max_num_seqs" in profile_engine else MAX_BATCHES
    )
    traffic = _traffic(args)
    prices = {gpus[0].name: args.price} if args.price is not None else {}
    return PlanRequest(
        model=model,
        gpus=gpus,
        rps=traffic.rate,
        traffic=traffic,
        slos=slos,
        quants=quants,
        tps=tps,
        max_batches=batches,
        kv_dtype=args.kv_dtype,
        headroom=args.headroom,
        engine=Engine(max_num_batched_tokens=budget, gpu_memory_utilization=args.gpu_memory_utilization),
        eff=eff,
        prices=prices,
    )


def _traffic(args: PlanArgs) -> Traffic:
    if args.replay is not None:
        # The recorded run's own send times and token counts (time-scaled to --rps if given).
        return Traffic.replaying(from_bench(read_bench(args.replay)["records"]), args.rps)
    return Traffic(
        input_len=args.input_len,
        output_len=args.output_len,
        length_dist=args.length_dist,
        len_range=args.len_range,
        prefix_share=args.prefix_share,
        rate=args.rps,
        num_requests=args.num_requests,
        seed=args.seed,
    )


def _slos(args: PlanArgs) -> tuple[LatencySLO, ...]:
    """The preset's bounds, then the flags'; with neither, the default preset's."""
    slos = list(preset(args.slo_preset)) if args.slo_preset else []
    for metric, ms in (("ttft", args.ttft_p95), ("tpot", args.tpot_p95), ("e2e", args.e2e_p95)):
        if ms is not None:
            if ms <= 0:
                raise UsageError(f"--{metric}-p95 must be a positive number of milliseconds, got {ms}")
            slos.append(LatencySLO(metric, 95, ms))
    return tuple(slos) or preset(DEFAULT_PRESET)


def _slo_source(args: PlanArgs) -> dict:
    """Where the plan's SLOs came from, so the output can say a default was used."""
    flags = [
        f
        for f, v in (
            ("--ttft-p95", args.ttft_p95),
            ("--tpot-p95", args.tpot_p95),
            ("--e2e-p95", args.e2e_p95),
        )
        if v is not None
    ]
    if args.slo_preset is None and not flags:
        return {"preset": DEFAULT_PRESET, "default": True, "flags": []}
    name = args.slo_preset.strip().lower() if args.slo_preset else None
    return {"preset": name, "default": False, "flags": flags}


def _predict(args: PlanArgs, req: PlanRequest) -> dict:
    if len(req.gpus) != 1 or len(req.quants) != 1 or len(req.tps) != 1 or len(req.max_batches) != 1:
        raise UsageError("--predict needs one --gpu, one --quant, one --tp and one --max-batch")
    p = predict(req, req.gpus[0], req.tps[0], req.quants[0], req.max_batches[0], args.replicas)
    data = {
        "mode": "predict",
        "model": req.model.name,
        "rps": req.rps,
        "traffic": _traffic_dict(args, req.traffic),
        "slos": {s.name: s.ms for s in req.slos},
        "slo_source": _slo_source(args),
        "prediction": plan_dict(p, req),
        "simulation": _sim_dict(p.result),
        "efficiency": req.eff.__dict__,
    }
    data["prediction"]["slos_met"] = all(s.holds(p.result) for s in req.slos)
    return data


def _traffic_dict(args: PlanArgs, traffic: Traffic) -> dict:
    if traffic.trace:
        return {"arrivals": "replay", "source": str(args.replay), "requests": len(traffic.trace)}
    return {"arrivals": "poisson", "requests": traffic.num_requests, "seed": traffic.seed}


def _sim_dict(r) -> dict:
    return {
        "steps": r.num_steps,
        "mean_batch": round(r.mean_batch, 2),
        "decode_only_steps": round(r.step_mix.get("decode_only", 0.0), 3),
        "preemptions": r.num_preemptions,
        "saturated": r.saturated,
        "measured_requests": int(len(r.e2e_s)),
    }


def run_calibration(args: CalibrateArgs, progress=None) -> dict:
    from .probe import probe_cpu

    bench = read_bench(args.bench_path)
    name = args.model or (bench.get("config") or {}).get("model") or "smollm2-135m"
    model = model_spec(name)
    hardware = probe_cpu(args.profile)
    replica = Replica(
        model=model,
        gpu=hardware,
        num_kv_blocks=max(1, hardware.memory_bytes // (args.block_size * int(model.kv_bytes_per_token(2)))),
        block_size=args.block_size,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )
    cal = calibrate(bench, model, hardware, replica, progress)
    engine = {"max_num_seqs": args.max_num_seqs, "max_num_batched_tokens": args.max_num_batched_tokens}
    path = save_profile(args.profile, hardware, cal.eff, engine)
    return {
        "mode": "calibrate",
        "profile": args.profile,
        "profile_path": str(path),
        "model": model.name,
        "hardware": {
            "bandwidth_gb_s": round(hardware.hbm_bandwidth / 1e9, 1),
            "bf16_gflop_s": round(hardware.bf16_flops / 1e9, 1),
            "int8_gop_s": round(hardware.int8_ops / 1e9, 1),
        },
        "efficiency": cal.eff.__dict__,
        "engine": engine,
        "measured": {k: round(v, 3) for k, v in cal.measured.items()},
        "predicted": {k: round(v, 3) for k, v in cal.predicted.items()},
        "rms_log_error": round(cal.rms_log_error, 4),
        "simulations": cal.num_simulations,
        "memory": memory_dict_for_cpu(model, hardware),
    }


def read_bench(path: Path) -> dict:
    """The results of an `llmtool bench --json` run, with their per-request records."""
    try:
        bench = json.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise UsageError(f"{path} is not JSON from `llmtool bench --json`: {e}") from None
    if not isinstance(bench, dict) or not isinstance(bench.get("records"), list):
        raise UsageError(f"{path} holds no 'records': write it with `llmtool bench --json`")
    return bench


def memory_dict_for_cpu(model, hardware) -> dict:
    from .memory import MemoryConfig, plan_memory

    return memory_dict(plan_memory(model, hardware, MemoryConfig(context_len=min(model.max_context, 2048))))
