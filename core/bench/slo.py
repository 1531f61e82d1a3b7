"""SLOs: the `--slo` expressions, their check against a Summary, and the per-request test
behind goodput.

An SLO is one bound on one summary value: `ttft_p99_ms=500` bounds the p99 TTFT from above,
`output_throughput>=100` bounds output throughput from below. `=` means the metric's natural
direction (latencies and error_rate are upper bounds, throughputs and goodput lower bounds);
`<=` and `>=` may be written explicitly. Not here: computing the Summary (metrics.py) or
printing anything (the CLI).
"""

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UsageError
from .records import RequestRecord

if TYPE_CHECKING:
    from .metrics import Summary

LATENCY_METRICS = ("ttft", "tpot", "itl", "e2e")  # per request; the Summary holds them in ms
AGGREGATE_METRICS = {  # run-level values and the bound `=` means for each
    "error_rate": "<=",
    "request_throughput": ">=",
    "output_throughput": ">=",
    "total_token_throughput": ">=",
    "goodput": ">=",
}
_TO_MS = {"ms": 1.0, "s": 1000.0}
_EXPR = re.compile(r"\s*([A-Za-z0-9_.]+)\s*(<=|>=|=)\s*(\S+)\s*")
_LATENCY_KEY = re.compile(r"(ttft|tpot|itl|e2e)_(mean|std|min|max|p\d+(?:\.\d+)?)_(ms|s)")
ACCEPTED_FORMS = (
    "accepted: {ttft,tpot,itl,e2e}_{mean,std,min,max,pN}_{ms,s}=VALUE (ttft_p99_ms=500, e2e_p99.9_s=2), "
    "error_rate=0.01, request_throughput>=2, output_throughput>=100, total_token_throughput>=500, "
    "goodput>=1; operators =, <=, >="
)


def percentile_key(p: float) -> str:
    """The stat name of a percentile: 50 -> "p50", 99.9 -> "p99.9" (one spelling everywhere)."""
    return f"p{float(p):.10g}"


@dataclass(frozen=True)
class SLO:
    metric: str  # Summary metric: "ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", or an aggregate ("goodput")
    stat: str | None  # "mean", "std", "min", "max", "p99", "p99.9"; None for aggregates
    op: str  # "<=" (upper bound) or ">=" (lower bound)
    threshold: float  # in the Summary's unit: ms for latencies
    text: str  # the expression as written
    unit: str | None = None  # "ms" or "s" as written, so messages speak the user's unit

    @property
    def name(self) -> str:
        """The left-hand side in canonical form: "ttft_p99_ms", "e2e_p50_s", "error_rate"."""
        if self.stat is None:
            return self.metric
        return f"{self.metric.removesuffix('_ms')}_{self.stat}_{self.unit}"

    @property
    def is_per_request(self) -> bool:
        """Whether one request can meet or miss it (goodput). A spread (std) describes a run,
        not a request, and aggregates like error_rate exist only for the whole run."""
        return self.stat is not None and self.stat != "std"

    def holds(self, value: float) -> bool:
        return value <= self.threshold if self.op == "<=" else value >= self.threshold


@dataclass(frozen=True)
class Violation:
    slo: SLO
    value: float | None  # measured, in the Summary's unit; None when it could not be measured
    message: str  # one line, e.g. "SLO violated: ttft_p99_ms = 734.2 > 500"


def parse_slo(text: str) -> SLO:
    """`ttft_p99_ms=500`, `tpot_mean_s<=0.05`, `error_rate=0.01`, `goodput>=1`, ... -> SLO.
    Bad input raises UsageError with one line naming the accepted forms."""

    def bad(reason: str) -> UsageError:
        return UsageError(f"bad SLO '{text}': {reason}; {ACCEPTED_FORMS}")

    m = _EXPR.fullmatch(text)
    if not m:
        raise bad("expected NAME=VALUE, NAME<=VALUE or NAME>=VALUE")
    key, op, raw = m.group(1).lower(), m.group(2), m.group(3)
    try:
        value = float(raw)
    except ValueError:
        raise bad(f"'{raw}' is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise bad(f"'{raw}' is not a finite number >= 0")
    if key in AGGREGATE_METRICS:
        if key == "error_rate" and value > 1:
            raise bad("error_rate is a fraction in [0, 1]")
        op = AGGREGATE_METRICS[key] if op == "=" else op
        return SLO(metric=key, stat=None, op=op, threshold=value, text=text.strip())
    lm = _LATENCY_KEY.fullmatch(key)
    if not lm:
        raise bad(f"unknown metric '{key}'")
    base, stat, unit = lm.groups()
    if stat.startswith("p"):
        p = float(stat[1:])
        if p > 100:
            raise bad(f"percentile {stat} is above p100")
        stat = percentile_key(p)
    op = "<=" if op == "=" else op  # every latency's natural bound is an upper one
    return SLO(
        metric=f"{base}_ms", stat=stat, op=op, threshold=value * _TO_MS[unit], text=text.strip(), unit=unit
    )


def _stat_of(values: Sequence[float], stat: str) -> float:
    if stat == "mean":
        return float(np.mean(values))
    if stat == "min":
        return float(np.min(values))
    if stat == "max":
        return float(np.max(values))
    return float(np.percentile(values, float(stat[1:])))


def request_value(record: RequestRecord, slo: SLO) -> float | None:
    """The request's own value for a per-request SLO, in ms; None when the request has none.

    ttft/tpot/e2e are one number per request, so the SLO's stat does not change them (a request
    meets `ttft_p99_ms=500` when its TTFT is <= 500 ms). ITL is many gaps per request: the
    SLO's stat is taken over this request's own gaps (`itl_max_ms` = its worst stall,
    `itl_p95_ms` = its p95 gap), so the per-request test asks what the pooled SLO asks.
    """
    base = slo.metric.removesuffix("_ms")
    if base == "itl":
        gaps = record.itl()
        return _stat_of(gaps, slo.stat) * 1000 if gaps else None
    seconds = {"ttft": record.ttft, "tpot": record.tpot, "e2e": record.e2e}[base]
    return None if seconds is None else seconds * 1000


def per_request_ok(record: RequestRecord, slos: Sequence[SLO]) -> bool:
    """Whether a request counts toward goodput: it completed and met every per-request SLO.

    A request with one output token has no TPOT and no ITL gap, so it passes those SLOs (it
    cannot have been slow between tokens); a completed request lacking TTFT or E2E fails, as
    nothing shows it met them. Aggregate SLOs (error_rate, throughputs) do not apply here.
    """
    if not record.ok:
        return False
    for slo in slos:
        if not slo.is_per_request:
            continue
        value = request_value(record, slo)
        if value is None:
            if slo.metric in ("tpot_ms", "itl_ms"):
                continue
            return False
        if not slo.holds(value):
            return False
    return True


def _fmt(x: float) -> str:
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.4g}"


def _unmeasured_reason(summary: "Summary", slo: SLO) -> str:
    if summary.num_total == 0:
        return "no requests"
    if summary.num_completed == 0 and slo.metric != "error_rate":
        return "no completed requests"
    if slo.metric in ("tpot_ms", "itl_ms"):
        return "no completed request had more than one output token"
    return "no data"


def evaluate(summary: "Summary", slos: Sequence[SLO]) -> list[Violation]:
    """Every SLO the summary misses, in the order given; one that could not be measured is
    missed too, since a CI gate must not pass on a run that produced nothing to judge."""
    violations = []
    for slo in slos:
        value = summary.value(slo.metric, slo.stat)
        if value is None:
            reason = _unmeasured_reason(summary, slo)
            violations.append(
                Violation(slo, None, f"SLO violated: {slo.name} could not be measured ({reason})")
            )
        elif not slo.holds(value):
            scale = _TO_MS[slo.unit] if slo.unit else 1.0
            cmp = ">" if slo.op == "<=" else "<"
            msg = f"SLO violated: {slo.name} = {_fmt(value / scale)} {cmp} {slo.threshold / scale:g}"
            violations.append(Violation(slo, value, msg))
    return violations


def error_gate(summary: "Summary", max_error_rate: float) -> Violation | None:
    """Failed requests beyond the tolerated share, as one line; None when within it.

    A benchmark whose server died mid-run still has figures for the requests that finished,
    but a CI job must not pass on it: by default (max_error_rate 0) one failed request fails
    the run. The share is of every measured request, failed ones included."""
    if not summary.num_failed or summary.error_rate is None or summary.error_rate <= max_error_rate:
        return None
    kinds = ", ".join(f"{kind} x{n}" for kind, n in sorted(summary.errors.items()))
    message = (
        f"{summary.num_failed} of {summary.num_total} requests failed ({kinds}): error rate "
        f"{_fmt(100 * summary.error_rate)}% > {max_error_rate * 100:g}% allowed (--max-error-rate)"
    )
    slo = SLO(metric="error_rate", stat=None, op="<=", threshold=max_error_rate, text="--max-error-rate")
    return Violation(slo, summary.error_rate, message)
