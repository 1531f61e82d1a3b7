"""`llmtool bench`: load-test an OpenAI-compatible server or our engine in-process, report
latency percentiles and throughput, and gate CI on SLOs; `llmtool bench compare A B`."""

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from .console import HELP_MARKUP, console, err_console
from .errors import handle_errors
from .options import ConfigOpt, DtypeOpt
from .output import write_json

METRICS_HELP = """Metrics (REFERENCE definitions): TTFT = scheduled send time -> first chunk with text;
E2E = scheduled send -> last text chunk; TPOT = (E2E - TTFT) / (output tokens - 1);
ITL = every gap between text chunks, a k-token chunk counting as k gaps of gap/k;
output tokens = the server's usage; throughputs over first dispatch -> last completion;
goodput = requests/s meeting every per-request SLO."""

EXIT_HELP = """Exit status: 0 when every request completed and every --slo held; 1 when a --slo is
missed, when more requests failed than --max-error-rate allows (default 0: any failed request,
e.g. a server that died mid-run), or when interrupted; 2 on a bad flag or input. The --json
file is written either way, with what finished."""

app = typer.Typer(
    rich_markup_mode=HELP_MARKUP,
    help="Benchmark a server (--url) or our engine in-process (default: the default model).\n\n"
    + METRICS_HELP
    + "\n\n"
    + EXIT_HELP,
    invoke_without_command=True,
)


@app.callback(invoke_without_command=True)
@handle_errors
def run(
    ctx: typer.Context,
    url: Annotated[
        str | None, typer.Option("--url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="In-process: the model to load. With --url: the model name to request."
        ),
    ] = None,
    endpoint: Annotated[str, typer.Option("--endpoint", help="completions or chat.")] = "completions",
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar="LLMTOOL_API_KEY", show_default=False, help="Bearer key for --url."),
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option("--tokenizer", help="Model reference whose tokenizer sizes the prompts (--url)."),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", "-c", min=1, help="Closed loop: requests in flight.")
    ] = None,
    rate: Annotated[
        float | None, typer.Option("--rate", help="Open loop: requests/s, Poisson (inf: all at once).")
    ] = None,
    burstiness: Annotated[
        float, typer.Option("--burstiness", help="Gamma shape of the gaps (1 Poisson, inf constant).")
    ] = 1.0,
    max_concurrency: Annotated[
        int | None, typer.Option("--max-concurrency", min=1, help="Open loop: cap in flight.")
    ] = None,
    num_requests: Annotated[
        int | None, typer.Option("--num-requests", "-n", min=1, help="Measured requests.")
    ] = None,
    duration: Annotated[float | None, typer.Option("--duration", help="Seconds to keep sending.")] = None,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Requests sent first and excluded.")] = 2,
    timeout: Annotated[float, typer.Option("--timeout", min=0.001, help="Seconds per request.")] = 600.0,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the prompts, lengths and arrival times.")] = 0,
    input_len: Annotated[int, typer.Option("--input-len", min=1, help="Prompt tokens (synthetic).")] = 256,
    output_len: Annotated[
        int | None, typer.Option("--output-len", min=1, help="Output tokens (default 128).")
    ] = None,
    len_range: Annotated[
        float, typer.Option("--len-range", min=0.0, max=0.99, help="Lengths uniform in len*(1 +- r).")
    ] = 0.0,
    prefix_len: Annotated[
        int, typer.Option("--prefix-len", min=0, help="Shared prefix tokens, before input-len.")
    ] = 0,
    dataset: Annotated[
        Path | None, typer.Option("--dataset", help="JSONL/JSON of prompts or ShareGPT conversations.")
    ] = None,
    no_ignore_eos: Annotated[
        bool,
        typer.Option("--no-ignore-eos", help="Let requests stop at EOS (default: fixed output lengths)."),
    ] = False,
    slo: Annotated[
        list[str] | None,
        typer.Option("--slo", help="Gate, e.g. ttft_p99_ms=500, tpot_p99_ms=50, error_rate=0.01."),
    ] = None,
    max_error_rate: Annotated[
        float | None,
        typer.Option(
            "--max-error-rate",
            min=0.0,
            max=1.0,
            show_default=False,
            help="Share of requests that may fail before the run fails with exit 1 (default 0, or an "
            "error_rate --slo's bound).",
        ),
    ] = None,
    p99: Annotated[bool, typer.Option("--p99", help="Add p99.9 and max columns.")] = False,
    percentiles: Annotated[
        str | None, typer.Option("--percentiles", help="Comma-separated, e.g. 50,90,99,99.9.")
    ] = None,
    sweep: Annotated[
        str | None, typer.Option("--sweep", help="One run per value: concurrency=1,2,4,8 or rate=1,2,4.")
    ] = None,
    sweep_stop_on_slo: Annotated[
        bool, typer.Option("--sweep-stop-on-slo", help="End the sweep at the first step that misses an SLO.")
    ] = False,
    json_path: Annotated[
        Path | None,
        typer.Option(
            "--json", help="Write config, summary, environment and every request here ('-': stdout)."
        ),
    ] = None,
    json_format: Annotated[
        str,
        typer.Option(
            "--json-format",
            help="llmtool, or vllm: the flat result of `vllm bench serve --save-result --save-detailed` "
            "(one JSON line per step of a sweep).",
        ),
    ] = "llmtool",
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Write one row per request here.")] = None,
    plot_path: Annotated[
        Path | None, typer.Option("--plot", help="PNG: latency CDFs, or throughput/latency over a sweep.")
    ] = None,
    dtype: DtypeOpt = "auto",
    config: ConfigOpt = None,
) -> None:
    """Example: llmtool bench --url http://127.0.0.1:8000 -c 8 -n 64 --slo ttft_p99_ms=500"""
    if ctx.invoked_subcommand is not None:
        return
    from ..core.bench.load import LoadConfig
    from ..core.bench.runner import BenchConfig, run_sweep
    from ..core.bench.workload import WorkloadConfig
    from ..core.errors import UsageError
    from .progress import rich_progress

    if concurrency is None and rate is None:
        concurrency = 4
    if num_requests is None and duration is None:
        num_requests = 4 * (concurrency or 4)
    pcts = _percentiles(percentiles, p99)
    bench_config = BenchConfig(
        url=url,
        model=model,
        endpoint=endpoint,
        api_key=api_key,
        tokenizer=tokenizer,
        dtype=dtype,
        load=LoadConfig(
            num_requests=num_requests,
            duration=duration,
            concurrency=concurrency,
            rate=rate,
            burstiness=burstiness,
            max_concurrency=max_concurrency,
            warmup=warmup,
            seed=seed,
        ),  # fmt: skip
        workload=WorkloadConfig(
            input_len=input_len,
            output_len=output_len,
            len_range=len_range,
            prefix_len=prefix_len,
            seed=seed,
            dataset=dataset,
        ),  # fmt: skip
        timeout=timeout,
        ignore_eos=not no_ignore_eos,
        slos=tuple(slo or ()),
        max_error_rate=_max_error_rate(max_error_rate, slo or ()),
        percentiles=pcts,
    )
    if endpoint not in ("completions", "chat"):
        raise UsageError(f"--endpoint must be completions or chat, not '{endpoint}'")
    if json_format not in ("llmtool", "vllm"):
        raise UsageError(f"--json-format must be llmtool or vllm, not '{json_format}'")
    bench_config.parsed_slos()  # a malformed SLO is a usage error before anything starts
    if plot_path:
        from .bench_plot import _pyplot

        _pyplot()  # a missing matplotlib fails now, not after the run

    loads = _sweep_loads(bench_config.load, sweep)
    with rich_progress() as progress:

        def report(done: int, total: int | None) -> None:
            progress("requests", done, total or 0)

        results = run_sweep(bench_config, loads, report, stop_on_slo=sweep_stop_on_slo)
    if json_path:
        write_json(_json_text(results, sweep, json_format), json_path)
    if csv_path:
        write_csv(results, csv_path)
    if plot_path:
        from .bench_plot import plot_results

        plot_results(results, plot_path, None if sweep is None else sweep.split("=")[0].strip())
    from .bench_report import print_summary, sweep_table

    extra = ("max",) if p99 else ()
    for result in results:
        print_summary(result.to_dict()["summary"], _title(result), extra)
    if sweep is not None:
        console.print(sweep_table(sweep.split("=")[0], [r.to_dict()["summary"] for r in results], results))
    aborted = any(r.aborted for r in results)
    if aborted:
        err_console.print("[yellow]interrupted: the figures cover the requests that finished[/]")
    for result in results:
        gates = list(result.violations)
        if result.error_violation is not None:  # says more than an error_rate SLO's own line
            gates = [v for v in gates if v.slo.metric != "error_rate"] + [result.error_violation]
        for violation in gates:
            where = f"{_step(result)}: " if sweep is not None else ""
            err_console.print(f"[bold red]{where}{violation.message}[/]", highlight=False, soft_wrap=True)
    if aborted or any(r.failed for r in results):
        raise typer.Exit(1)
    if bench_config.slos:
        console.print(f"[green]all {len(bench_config.slos)} SLOs met[/]")


def _max_error_rate(flag: float | None, slos) -> float:
    """--max-error-rate when given; else an `error_rate` SLO's bound, which already says how many
    failures the user accepts; else 0: a run with a failed request fails."""
    if flag is not None:
        return flag
    from ..core.bench.slo import parse_slo

    bounds = [s.threshold for s in map(parse_slo, slos) if s.metric == "error_rate" and s.op == "<="]
    return min(bounds) if bounds else 0.0


def _json_text(results, sweep: str | None, json_format: str) -> str:
    if json_format == "vllm":
        from ..core.bench.vllm_format import to_vllm

        # vLLM appends one result per line (--append-result); a sweep is several results.
        lines = [json.dumps(to_vllm(r)) for r in results]
        return "\n".join(lines) if sweep is not None else json.dumps(to_vllm(results[0]), indent=2)
    if sweep is None:
        return json.dumps(results[0].to_dict(), indent=2)
    return json.dumps({"sweep": sweep, "steps": [r.to_dict() for r in results]}, indent=2)


def _step(result) -> str:
    load = result.config.load
    return f"concurrency {load.concurrency}" if load.concurrency else f"rate {load.rate}/s"


def _title(result) -> str:
    target, load = result.target, result.config.load
    title = f"{target.get('model')} ({target['kind']}"
    title += f", {target['url']})" if target["kind"] == "http" else f", {target.get('dtype')})"
    return title + (f": concurrency {load.concurrency}" if load.concurrency else f": rate {load.rate}/s")


def _sweep_loads(base, sweep: str | None) -> list:
    from dataclasses import replace

    from ..core.errors import UsageError

    if sweep is None:
        return [base]
    axis, _, values = sweep.partition("=")
    axis = axis.strip().replace("-", "_")
    if axis not in ("concurrency", "rate") or not values:
        raise UsageError(f"--sweep takes concurrency=1,2,4 or rate=0.5,1,2, not '{sweep}'")
    try:
        numbers = [(int if axis == "concurrency" else float)(v) for v in values.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--sweep {axis}= takes comma-separated numbers, not '{values}'") from None
    if not numbers:
        raise UsageError(f"--sweep {axis}= needs at least one value")
    if axis == "concurrency":
        return [replace(base, concurrency=n, rate=None, max_concurrency=None) for n in numbers]
    return [replace(base, rate=r, concurrency=None) for r in numbers]


def write_csv(results, path: Path) -> None:
    """One row per request (every step of a sweep), written to a temp file and renamed."""
    import csv
    import io

    fields = ["step", "index", "scheduled", "sent", "ttft_ms", "tpot_ms", "e2e_ms", "prompt_tokens",
              "output_tokens", "error", "error_detail"]  # fmt: skip
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for step, result in enumerate(results):
        for r in result.records:
            ms = lambda v: None if v is None else round(1000 * v, 3)  # noqa: E731
            writer.writerow({
                "step": step, "index": r.index, "scheduled": r.scheduled, "sent": r.sent, "ttft_ms": ms(r.ttft),
                "tpot_ms": ms(r.tpot), "e2e_ms": ms(r.e2e), "prompt_tokens": r.prompt_tokens,
                "output_tokens": r.output_tokens, "error": r.error, "error_detail": r.error_detail,
            })  # fmt: skip
    write_json(buffer.getvalue().rstrip("\n"), path)


def _percentiles(text: str | None, p99: bool) -> tuple[float, ...]:
    from ..core.bench.metrics import DEFAULT_PERCENTILES
    from ..core.errors import UsageError

    if text is None:
        values = list(DEFAULT_PERCENTILES)
    else:
        try:
            values = [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--percentiles takes numbers like 50,90,99.9, not '{text}'") from None
        if not values or any(not (0 <= v <= 100) or math.isnan(v) for v in values):
            raise UsageError(f"--percentiles must be between 0 and 100: '{text}'")
    if p99 and 99.9 not in values:
        values.append(99.9)
    return tuple(int(v) if v == int(v) else v for v in values)


@app.command("compare", short_help="Side by side with ratios B/A: llmtool, vLLM or GuideLLM results.")
@handle_errors
def compare(
    a: Annotated[Path, typer.Argument(help="Baseline result: llmtool, vLLM or GuideLLM JSON.")],
    b: Annotated[Path, typer.Argument(help="Result to compare with it.")],
) -> None:
    """Side by side with ratios B/A (green where B is better). Reads `llmtool bench --json`
    (either --json-format), `vllm bench serve --save-result` and `guidellm run --output
    kind=json` files, telling them apart by their keys; a figure a tool does not state is "-".

    Example: llmtool bench compare before.json vllm-result.json
    """
    from ..core.bench.result_file import read_result
    from .bench_report import compare_table

    files = [read_result(path) for path in (a, b)]
    names = [f.path.stem + ("" if f.tool == "llmtool" else f" ({f.tool})") for f in files]
    console.print(compare_table(files[0].summary, files[1].summary, *names))
