"""GuideLLM's result file (`guidellm run --output kind=json`, GuideLLM 0.8) read as our
summary's shape, for `bench compare`.

The file (GenerativeBenchmarksReport) holds `benchmarks[]`, each with `metrics` (every
figure a StatusDistributionSummary: `successful` / `errored` / `incomplete` / `total`, each a
DistributionSummary with mean, median, std_dev, min, max, count and `percentiles` p001 ... p999)
and `requests.successful[]`, per-request records with time_to_first_token_ms,
inter_token_latency_ms, request_latency (s), output_tokens. The definitions differ from ours:
GuideLLM's per-request `inter_token_latency_ms` is (last token - first token) / (n - 1), which
is our TPOT, while its `time_per_output_token_ms` counts the first token too; its metrics'
inter_token_latency_ms weights each request's mean gap by its n - 1 gaps, which is our pooled
ITL when a request's gaps are even; its percentiles are nearest-rank, ours interpolate. So
where the per-request records are there, latencies are recomputed from them our way; else
the aggregates are taken as they are. Throughputs are GuideLLM's time-weighted means (events
over the measured window). Not here: running GuideLLM.
"""

import numpy as np

from .slo import percentile_key

# GuideLLM's percentile names -> ours
_PERCENTILES = {"p001": 0.1, "p01": 1, "p05": 5, "p10": 10, "p25": 25, "p50": 50, "p75": 75,
                "p90": 90, "p95": 95, "p99": 99, "p999": 99.9}  # fmt: skip
_OURS = (50, 90, 95, 99, 99.9)


def is_guidellm(data) -> bool:
    benchmarks = data.get("benchmarks") if isinstance(data, dict) else None
    return (
        isinstance(benchmarks, list)
        and bool(benchmarks)
        and all(isinstance(b, dict) and isinstance(b.get("metrics"), dict) for b in benchmarks)
    )


def from_guidellm(benchmark: dict) -> dict:
    """One entry of `benchmarks` as our summary's shape, as far as it goes."""
    metrics = benchmark["metrics"]
    totals = metrics.get("request_totals") or {}
    done, failed = totals.get("successful"), totals.get("errored")
    # Incomplete requests were cut off by the run's own end (max duration), not by the server.
    judged = (done or 0) + (failed or 0)
    summary = {
        "num_total": totals.get("total"),
        "num_completed": done,
        "num_failed": failed,
        "error_rate": failed / judged if judged and failed is not None else None,
        "request_throughput": _mean(metrics.get("requests_per_second")),
        "output_throughput": _mean(metrics.get("output_tokens_per_second")),
        "total_token_throughput": _mean(metrics.get("tokens_per_second")),
        "goodput": _mean(metrics.get("request_goodput")),
        "ttft_ms": _aggregate(metrics.get("time_to_first_token_ms")),
        "tpot_ms": _empty(),  # no aggregate has our per-request definition: from the records below
        "itl_ms": _aggregate(metrics.get("inter_token_latency_ms")),
        "e2e_ms": _aggregate(metrics.get("request_latency"), scale=1000.0),
    }
    records = ((benchmark.get("requests") or {}).get("successful")) or []
    if records:
        summary |= _from_records(records)
    return summary


def _successful(status_summary) -> dict | None:
    return status_summary.get("successful") if isinstance(status_summary, dict) else None


def _mean(status_summary) -> float | None:
    dist = _successful(status_summary)
    return None if not dist or not dist.get("count") else dist.get("mean")


def _empty() -> dict:
    return {"mean": None, "std": None, "percentiles": {}}


def _aggregate(status_summary, scale: float = 1.0) -> dict:
    dist = _successful(status_summary)
    if not dist or not dist.get("count"):
        return _empty()
    pct = dist.get("percentiles") or {}
    percentiles = {
        percentile_key(p): pct[k] * scale for k, p in _PERCENTILES.items() if pct.get(k) is not None
    }
    return {
        "mean": _scaled(dist.get("mean"), scale),
        "std": _scaled(dist.get("std_dev"), scale),
        "min": _scaled(dist.get("min"), scale),
        "max": _scaled(dist.get("max"), scale),
        "percentiles": percentiles,
    }


def _scaled(value, scale: float) -> float | None:
    return None if value is None else value * scale


def _from_records(records: list[dict]) -> dict:
    """Latencies from the per-request records, by our definitions and percentile method."""

    def column(key: str, scale: float = 1.0, min_tokens: int = 1) -> list[float]:
        return [
            r[key] * scale
            for r in records
            if r.get(key) is not None and (r.get("output_tokens") or 0) >= min_tokens
        ]

    out = {
        "ttft_ms": _stats(column("time_to_first_token_ms")),
        # (last - first) / (n - 1): our TPOT, for requests with more than one output token
        "tpot_ms": _stats(column("inter_token_latency_ms", min_tokens=2)),
        "e2e_ms": _stats(column("request_latency", scale=1000.0)),
    }
    return {k: v for k, v in out.items() if v["percentiles"]}


def _stats(values: list[float]) -> dict:
    if not values:
        return _empty()
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
        "percentiles": {percentile_key(p): float(np.percentile(a, p)) for p in _OURS},
    }
