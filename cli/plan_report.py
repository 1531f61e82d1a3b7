"""Rich rendering of plan-capacity results (the dicts core.capacity.run returns)."""

from .console import console
from .table import Table


def _f(x, nd: int = 1) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def _config(p: dict) -> str:
    return f"{p['replicas']} x TP{p['tp']} {p['gpu']} ({p['total_gpus']} GPUs), {p['quant']}, max batch {p['max_batch']}"


def latency_table(p: dict, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    for q in ("p50", "p95", "p99"):
        table.add_column(q, justify="right")
    for key, label in (("ttft_ms", "TTFT (ms)"), ("tpot_ms", "TPOT (ms)"), ("e2e_ms", "E2E (ms)")):
        table.add_row(label, *(_f(p["latency"][key][q]) for q in ("p50", "p95", "p99")))
    return table


def memory_table(m: dict, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("per GPU")
    table.add_column("GB", justify="right")
    for key, label in (
        ("total_gb", "device memory"),
        ("usable_gb", "usable (utilization)"),
        ("weights_gb", "weights (this TP shard)"),
        ("activations_gb", "peak activations"),
        ("reserve_gb", "reserve (context, workspaces)"),
        ("kv_cache_gb", "KV cache"),
    ):
        table.add_row(label, _f(m[key], 2))
    table.caption = (
        f"KV {m['kv_bytes_per_token']:,} B/token -> {m['kv_capacity_tokens']:,} tokens, "
        f"{m['max_full_length_seqs']:,} full-length sequences"
    )
    return table


def plans_table(plans: list[dict], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in (
        "GPU",
        "TP",
        "replicas",
        "GPUs",
        "quant",
        "max batch",
        "TTFT p95",
        "TPOT p95",
        "tok/s/GPU",
        "$/h",
        "$/1K tok",
    ):
        table.add_column(col, justify="left" if col in ("GPU", "quant") else "right")
    for p in plans:
        if p is None:
            continue
        lat = p["latency"]
        table.add_row(
            p["gpu"],
            str(p["tp"]),
            str(p["replicas"]),
            str(p["total_gpus"]),
            p["quant"],
            str(p["max_batch"]),
            _f(lat["ttft_ms"]["p95"]),
            _f(lat["tpot_ms"]["p95"], 2),
            _f(p["output_tok_s_per_gpu_at_rps"]),
            _f(p["price_per_hour"], 2),
            _f(p["cost_per_1k_output_tokens"], 5),
        )
    return table


def slo_text(data: dict) -> str:
    """The plan's SLOs and where they came from, e.g. "ttft_p95_ms <= 500, tpot_p95_ms <= 50 (the
    default, preset 'interactive'; ...)": a default the user did not choose is said to be one."""
    text = ", ".join(f"{k} <= {v:g}" for k, v in data["slos"].items())
    source = data.get("slo_source") or {}
    if source.get("default"):
        text += f" (the default, preset '{source['preset']}'; set --ttft-p95/--tpot-p95/--e2e-p95 or --slo-preset)"
    elif source.get("preset"):
        text += f" (preset '{source['preset']}'{' + flags' if source.get('flags') else ''})"
    return text


def print_plan(data: dict, explain: bool) -> None:
    if data.get("mode") == "predict":
        p = data["prediction"]
        t = data.get("traffic") or {}
        how = (
            f" (replaying {t['requests']} requests of {t['source']})" if t.get("arrivals") == "replay" else ""
        )
        console.print(
            f"[bold]Prediction[/] for {data['model']} at {data['rps']:g} req/s{how}: {_config(p)}",
            highlight=False,
        )
        verdict = "[green]met[/]" if p.get("slos_met") else "[red]missed[/]"
        console.print(f"SLOs {slo_text(data)}: {verdict}", highlight=False)
        console.print(latency_table(p, "Predicted latency"))
        console.print(
            f"output throughput {_f(p['replica_output_tok_s'] * p['replicas'])} tok/s; "
            f"mean batch {_f(p['mean_batch'])}; saturated: {data['simulation']['saturated']}",
            highlight=False,
        )
        return
    rec = data["recommendation"]
    head = f"{data['model']} at {data['rps']:g} req/s (+{100 * data['headroom']:.0f}% headroom), SLOs {slo_text(data)}"
    if rec is None:
        console.print(f"[bold red]No configuration meets the SLOs[/] for {head}.", highlight=False)
    else:
        console.print(f"[bold green]Recommendation[/]: {_config(rec)} for {head}", highlight=False)
        console.print(
            f"${_f(rec['price_per_hour'], 2)}/hour, ${_f(rec['cost_per_1k_output_tokens'], 5)} per 1K output tokens, "
            f"{_f(rec['output_tok_s_per_gpu_at_rps'])} output tok/s per GPU at the requested rate; "
            f"goodput {_f(rec['goodput_rps_per_replica'], 2)} of {_f(rec['simulated_rps_per_replica'], 2)} req/s "
            "per replica",
            highlight=False,
        )
        console.print(
            latency_table(rec, "Predicted latency (one replica at its share of the rate + headroom)")
        )
        console.print(memory_table(rec["memory"], "Memory"))
    per_gpu = data.get("per_gpu") or {}
    if len(per_gpu) > 1:
        console.print(plans_table(list(per_gpu.values()), "Best per GPU type"))
        missing = [name for name, p in per_gpu.items() if p is None]
        if missing:
            console.print(f"no configuration meets the SLOs on: {', '.join(missing)}", highlight=False)
    if data["runner_ups"]:
        console.print(plans_table(data["runner_ups"][:5], "Runner-up configurations"))
    if explain:
        _print_explain(data)
    elif rec is None or data["rejected"]:
        console.print(
            f"[dim]{len(data['rejected'])} configurations rejected; --explain lists why[/]", highlight=False
        )


def _print_explain(data: dict) -> None:
    ex = data.get("explain") or {}
    if ex.get("steps"):
        table = Table(title="Step time (layer 2: roofline + all-reduce + overhead)", title_justify="left")
        for col in (
            "step",
            "GB moved",
            "TFLOP",
            "memory ms",
            "compute ms",
            "all-reduce ms",
            "overhead ms",
            "total ms",
            "bound",
        ):
            table.add_column(col, justify="left" if col in ("step", "bound") else "right")
        for s in ex["steps"]:
            table.add_row(
                s["step"],
                _f(s["gb_moved"], 2),
                _f(s["tflop"], 3),
                _f(s["memory_ms"], 2),
                _f(s["compute_ms"], 2),
                _f(s["allreduce_ms"], 2),
                _f(s["overhead_ms"], 2),
                _f(s["total_ms"], 2),
                s["bound"],
            )
        console.print(table)
    if ex.get("simulation"):
        s = ex["simulation"]
        console.print(
            f"Simulation (layer 3): {s['steps']:,} engine steps, mean batch {s['mean_batch']}, "
            f"{100 * s['decode_only_steps']:.0f}% decode-only steps, {s['preemptions']} preemptions, "
            f"{s['measured_requests']} requests measured",
            highlight=False,
        )
    table = Table(
        title=f"Search (layer 4): {data['num_simulations']} simulations; rejected", title_justify="left"
    )
    for col in ("GPU", "TP", "quant", "max batch", "why"):
        table.add_column(col)
    for r in data["rejected"]:
        table.add_row(r["gpu"], str(r["tp"]), r["quant"], str(r["max_batch"] or "-"), r["reason"])
    console.print(table)


def print_calibration(data: dict) -> None:
    hw = data["hardware"]
    console.print(
        f"[bold]Profile '{data['profile']}'[/] written to {data['profile_path']} "
        f"(measured here: {hw['bandwidth_gb_s']} GB/s, {hw['bf16_gflop_s']} bf16 GFLOP/s)",
        highlight=False,
    )
    eff = data["efficiency"]
    console.print(
        f"fitted: memory {eff['memory']:.3f}, compute {eff['compute']:.3f} of peak; "
        f"{1e3 * eff['step_overhead_s']:.2f} ms per step + {1e3 * eff['per_seq_overhead_s']:.3f} ms per sequence",
        highlight=False,
    )
    table = Table(title="Calibration fit", title_justify="left")
    for col in ("target", "measured", "simulated", "ratio"):
        table.add_column(col, justify="left" if col == "target" else "right")
    for key, value in data["measured"].items():
        pred = data["predicted"][key]
        table.add_row(key, _f(value, 2), _f(pred, 2), _f(pred / value if value else None, 3))
    console.print(table)
