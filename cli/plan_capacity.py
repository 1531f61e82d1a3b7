"""`llmtool plan-capacity`: how many GPUs of which kind serve this traffic under these SLOs."""

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from .console import console
from .errors import handle_errors
from .options import ConfigOpt, JsonOpt
from .output import write_json
from .progress import rich_progress


def _csv(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    from ..core.errors import UsageError

    if not text:
        return None
    try:
        values = tuple(int(t) for t in _csv(text))
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise UsageError(f"{flag} values must be positive integers, got '{text}'")
    return values


@handle_errors
def plan_capacity(
    rps: Annotated[
        float | None, typer.Option("--rps", help="Requests per second to serve (Poisson).")
    ] = None,
    replay: Annotated[
        Path | None,
        typer.Option(
            "--replay",
            help="Simulate the requests of an `llmtool bench --json` run (send times, token counts) "
            "instead of Poisson; --rps time-scales it.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Catalog name, HF config.json or directory, .gguf, or alias."),
    ] = None,
    gpu: Annotated[
        str, typer.Option("--gpu", help="GPU type or calibrated profile (cpu-local).")
    ] = "H100-SXM",
    compare_gpus: Annotated[
        str | None,
        typer.Option("--compare-gpus", help="Plan for each, side by side: h100-sxm,h200,a100-80gb."),
    ] = None,
    gpu_spec: Annotated[Path | None, typer.Option("--gpu-spec", help="TOML file adding GPU types.")] = None,
    input_len: Annotated[int, typer.Option("--input-len", min=1, help="Mean prompt tokens.")] = 1024,
    output_len: Annotated[int, typer.Option("--output-len", min=1, help="Mean output tokens.")] = 128,
    length_dist: Annotated[
        str, typer.Option("--length-dist", help="fixed, uniform (len x (1 +- --len-range)) or exponential.")
    ] = "fixed",
    len_range: Annotated[
        float, typer.Option("--len-range", min=0.0, max=0.99, help="Uniform half-width.")
    ] = 0.5,
    prefix_share: Annotated[
        float, typer.Option("--prefix-share", min=0.0, max=0.99, help="Share of each prompt common to all.")
    ] = 0.0,
    ttft_p95: Annotated[float | None, typer.Option("--ttft-p95", help="SLO: p95 TTFT, ms.")] = None,
    tpot_p95: Annotated[float | None, typer.Option("--tpot-p95", help="SLO: p95 TPOT, ms.")] = None,
    e2e_p95: Annotated[
        float | None, typer.Option("--e2e-p95", help="SLO: p95 end-to-end latency, ms.")
    ] = None,
    slo_preset: Annotated[
        str | None,
        typer.Option(
            "--slo-preset",
            show_default=False,
            help="interactive (TTFT p95 500, TPOT p95 50 ms), mlperf-interactive (TTFT p99 450, TPOT p99 "
            "40 ms) or mlperf-server (TTFT p99 2000, TPOT p99 200 ms); --ttft-p95 etc. add to it. "
            "Default: interactive, when no SLO flag is given.",
        ),
    ] = None,
    quant: Annotated[
        str | None,
        typer.Option("--quant", help="bf16, fp8, int8, int4, or a comma list (default: search all)."),
    ] = None,
    kv_dtype: Annotated[
        str, typer.Option("--kv-dtype", help="KV cache dtype: bf16, fp16, fp8, int8.")
    ] = "bf16",
    gpus_per_node: Annotated[int, typer.Option("--gpus-per-node", min=1, help="Largest TP group.")] = 8,
    max_tp: Annotated[int, typer.Option("--max-tp", min=1, help="Search TP in 1, 2, 4, 8 up to this.")] = 8,
    tp: Annotated[str | None, typer.Option("--tp", help="Only these TP degrees, e.g. 4 or 2,4.")] = None,
    max_batch: Annotated[
        str | None, typer.Option("--max-batch", help="Max sequences per step to try (default 32,64,128,256).")
    ] = None,
    price: Annotated[float | None, typer.Option("--price", min=0.0, help="$ per GPU-hour for --gpu.")] = None,
    gpu_memory_utilization: Annotated[
        float,
        typer.Option("--gpu-memory-utilization", min=0.05, max=1.0, help="Share of memory for the engine."),
    ] = 0.9,
    max_num_batched_tokens: Annotated[
        int | None,
        typer.Option("--max-num-batched-tokens", min=1, help="Chunked-prefill step budget (2048)."),
    ] = None,
    headroom: Annotated[float, typer.Option("--headroom", min=0.0, help="Plan for rps x (1 + this).")] = 0.2,
    num_requests: Annotated[
        int, typer.Option("--num-requests", min=20, help="Requests per simulation.")
    ] = 400,
    seed: Annotated[int, typer.Option("--seed", help="Seeds arrivals and lengths.")] = 0,
    predict: Annotated[
        bool,
        typer.Option("--predict", help="No search: simulate the pinned --tp/--quant/--max-batch at --rps."),
    ] = False,
    replicas: Annotated[
        int, typer.Option("--replicas", min=1, help="With --predict: replicas sharing --rps.")
    ] = 1,
    explain: Annotated[
        bool, typer.Option("--explain", help="Show each layer: memory, step time, simulation, search.")
    ] = False,
    calibrate: Annotated[
        Path | None,
        typer.Option("--calibrate", help="Fit a hardware profile to an `llmtool bench --json` run."),
    ] = None,
    profile: Annotated[
        str, typer.Option("--profile", help="With --calibrate: the profile's name.")
    ] = "cpu-local",
    max_num_seqs: Annotated[
        int, typer.Option("--max-num-seqs", min=1, help="With --calibrate: the server's --max-num-seqs.")
    ] = 64,
    json_path: JsonOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Plan GPUs for a request rate under latency SLOs: memory per TP shard, a roofline step-time
    model, and a simulation that drives llmtool's own scheduler and block manager on a virtual
    clock; then the fewest GPUs (lowest $/hour) over TP x quantization x max batch with 20% headroom.

    Without an SLO flag the plan is held to the 'interactive' preset: TTFT p95 <= 500 ms and
    TPOT p95 <= 50 ms (the output says so).

    Example: llmtool plan-capacity --rps 50 --model llama-3.1-70b --gpu h100-sxm --ttft-p95 500 --tpot-p95 50
    """
    from ..core.capacity.run import CalibrateArgs, PlanArgs, run_calibration, run_plan
    from . import plan_report

    started = time.perf_counter()
    if calibrate is not None:
        args = CalibrateArgs(
            bench_path=calibrate,
            model=model,
            profile=profile,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens or 2048,
        )
        with rich_progress() as progress:
            data = run_calibration(args, progress)
        _emit(data, json_path, lambda: plan_report.print_calibration(data))
        return
    args = PlanArgs(
        rps=rps,
        model=model,
        gpus=tuple(_csv(compare_gpus)) or (gpu,),
        gpu_spec=gpu_spec,
        input_len=input_len,
        output_len=output_len,
        length_dist=length_dist,
        len_range=len_range,
        prefix_share=prefix_share,
        ttft_p95=ttft_p95,
        tpot_p95=tpot_p95,
        e2e_p95=e2e_p95,
        slo_preset=slo_preset,
        quants=tuple(_csv(quant)) or None,
        kv_dtype=kv_dtype,
        max_tp=min(max_tp, gpus_per_node),
        tps=_ints(tp, "--tp"),
        max_batches=_ints(max_batch, "--max-batch"),
        price=price,
        gpu_memory_utilization=gpu_memory_utilization,
        max_num_batched_tokens=max_num_batched_tokens,
        headroom=headroom,
        num_requests=num_requests,
        seed=seed,
        predict=predict,
        replicas=replicas,
        explain=explain,
        replay=replay,
    )
    with rich_progress() as progress:
        data = run_plan(args, progress)
    data["seconds"] = round(time.perf_counter() - started, 2)
    _emit(data, json_path, lambda: plan_report.print_plan(data, explain))
    if not predict and data.get("recommendation") is None:
        raise typer.Exit(1)


def _emit(data: dict, json_path: Path | None, render) -> None:
    if json_path:
        write_json(json.dumps(data, indent=2), json_path)
        if str(json_path) == "-":
            return
    render()
    console.print(f"[dim]{data.get('seconds', 0):.1f} s[/]", highlight=False)
