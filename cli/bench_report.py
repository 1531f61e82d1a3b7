"""Rich rendering of a benchmark: the latency table, throughput lines, SLO verdicts, and the
side-by-side comparison of two result files (`llmtool bench compare`)."""

from .console import console
from .table import Table

LATENCIES = (
    ("ttft_ms", "TTFT (ms)"),
    ("tpot_ms", "TPOT (ms)"),
    ("itl_ms", "ITL (ms)"),
    ("e2e_ms", "E2E (ms)"),
)
THROUGHPUTS = (
    ("request_throughput", "requests/s"),
    ("output_throughput", "output tok/s"),
    ("total_token_throughput", "total tok/s"),
    ("goodput", "goodput (req/s)"),
)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def latency_table(summary: dict, title: str, extra: tuple[str, ...] = ()) -> Table:
    """Rows: TTFT, TPOT, ITL, E2E, output tokens; columns: mean, the percentiles, then `extra`
    (e.g. "max"). `summary` is Summary.to_dict()."""
    keys = list(summary["ttft_ms"]["percentiles"])
    columns = ["mean", *keys, *extra]
    table = Table(title=title)
    table.add_column("metric")
    for col in columns:
        table.add_column(col, justify="right")
    rows = [*LATENCIES, ("output_tokens", "output tokens")]
    for key, label in rows:
        stats = summary[key]
        values = [stats["mean"], *(stats["percentiles"].get(k) for k in keys), *(stats.get(c) for c in extra)]
        table.add_row(label, *(_fmt(v) for v in values))
    return table


def print_summary(summary: dict, title: str, extra: tuple[str, ...] = ()) -> None:
    console.print(latency_table(summary, title, extra))
    parts = [f"{label} {_fmt(summary.get(key), 2)}" for key, label in THROUGHPUTS]
    console.print("  ".join(parts), highlight=False)
    errors = summary.get("errors") or {}
    done = f"{summary['num_completed']}/{summary['num_total']} completed"
    if errors:
        done += "; errors: " + ", ".join(f"{kind} x{n}" for kind, n in sorted(errors.items()))
    lag = summary.get("client_lag_ms") or {}
    lag_p99 = (lag.get("percentiles") or {}).get("p99")
    duration = summary.get("duration_s")
    console.print(
        f"{done}; duration {_fmt(duration, 2)} s; client send lag p99 {_fmt(lag_p99, 2)} ms", highlight=False
    )
    check = summary.get("token_check") or {}
    if check.get("num_mismatched"):
        console.print(
            f"[yellow]token counts: the server's usage and the client tokenizer disagree on "
            f"{check['num_mismatched']} of {check['num_compared']} requests "
            f"(max {100 * check['max_rel_diff']:.1f}%); figures use the server's[/]"
        )


# (metric, stat, label, higher is better)
COMPARED = (
    ("output_throughput", None, "output tok/s", True),
    ("request_throughput", None, "requests/s", True),
    ("goodput", None, "goodput (req/s)", True),
    ("ttft_ms", "p50", "TTFT p50 (ms)", False),
    ("ttft_ms", "p99", "TTFT p99 (ms)", False),
    ("tpot_ms", "p50", "TPOT p50 (ms)", False),
    ("tpot_ms", "p99", "TPOT p99 (ms)", False),
    ("itl_ms", "p50", "ITL p50 (ms)", False),
    ("itl_ms", "p99", "ITL p99 (ms)", False),
    ("e2e_ms", "p50", "E2E p50 (ms)", False),
    ("error_rate", None, "error rate", False),
)


def lookup(summary: dict, metric: str, stat: str | None) -> float | None:
    value = summary.get(metric)
    if stat is None:
        return value if isinstance(value, int | float) else None
    if not isinstance(value, dict):
        return None
    if stat in ("mean", "std", "min", "max"):
        return value.get(stat)
    return (value.get("percentiles") or {}).get(stat)


def compare_table(a: dict, b: dict, name_a: str, name_b: str) -> Table:
    """B relative to A: the ratio B/A per metric, green where B is better."""
    table = Table(title=f"{name_b} vs {name_a}")
    for col, justify in (("metric", "left"), (name_a, "right"), (name_b, "right"), ("B / A", "right")):
        table.add_column(col, justify=justify)
    for metric, stat, label, higher_better in COMPARED:
        va, vb = lookup(a, metric, stat), lookup(b, metric, stat)
        ratio = "-"
        if va and vb is not None:
            r = vb / va
            better = r > 1 if higher_better else r < 1
            ratio = f"[{'green' if better else 'red' if r != 1 else 'white'}]{r:.2f}x[/]"
        table.add_row(label, _fmt(va, 2), _fmt(vb, 2), ratio)
    return table


def sweep_table(axis: str, summaries: list[dict], results) -> Table:
    """One row per step of a sweep: the load, throughput, TTFT and TPOT p50/p99, SLO verdict."""
    table = Table(title=f"sweep over {axis}")
    columns = [
        axis,
        "output tok/s",
        "req/s",
        "TTFT p50",
        "TTFT p99",
        "TPOT p50",
        "TPOT p99",
        "goodput",
        "SLOs",
    ]
    for col in columns:
        table.add_column(col, justify="right")
    for summary, result in zip(summaries, results, strict=True):
        load = result.config.load
        slo = "-" if not result.config.slos else ("[red]missed[/]" if result.violations else "[green]met[/]")
        if result.error_violation is not None:
            slo = "[red]errors[/]"
        table.add_row(
            str(load.concurrency if axis == "concurrency" else load.rate),
            _fmt(summary.get("output_throughput")),
            _fmt(summary.get("request_throughput"), 2),
            *(
                _fmt(lookup(summary, m, s))
                for m, s in (("ttft_ms", "p50"), ("ttft_ms", "p99"), ("tpot_ms", "p50"), ("tpot_ms", "p99"))
            ),
            _fmt(summary.get("goodput"), 2),
            slo,
        )
    return table
