"""Metric math: RequestRecords -> Summary, exactly as REFERENCE.md defines each metric.

Latencies come from the record's properties (TTFT and E2E from the SCHEDULED send time,
TPOT per request, ITL pooled with k-token chunks split) and only completed requests enter
them: a failed request's partial stream would flatter or punish latency arbitrarily, and it
is counted under its error kind instead. Percentiles are numpy's default (linear
interpolation); std is numpy's default (population, ddof=0). Not here: timing requests
(the clients), SLO parsing (slo.py), rendering (the CLI).
"""

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .records import RequestRecord
from .slo import SLO, per_request_ok, percentile_key

DEFAULT_PERCENTILES = (50, 90, 95, 99)
NO_OUTPUT = "no_output"  # error kind of a request that ended without error yet streamed no text


@dataclass(frozen=True)
class Stats:
    """Mean, spread and percentiles of one per-request (or per-gap) quantity."""

    count: int  # values summarized
    mean: float | None  # None when count == 0, like every value below
    std: float | None  # population std (numpy default, ddof=0)
    min: float | None
    max: float | None
    percentiles: dict[str, float | None]  # "p50" -> value, one key per requested percentile

    @classmethod
    def of(cls, values: Sequence[float], percentiles: Sequence[float], scale: float = 1.0) -> "Stats":
        """`scale` converts units on the way in (1000 for seconds -> ms)."""
        keys = [percentile_key(p) for p in percentiles]
        if len(values) == 0:
            return cls(0, None, None, None, None, dict.fromkeys(keys))
        a = np.asarray(values, dtype=np.float64) * scale
        pct = np.percentile(a, list(percentiles)) if keys else []
        return cls(
            count=len(a),
            mean=float(a.mean()),
            std=float(a.std()),
            min=float(a.min()),
            max=float(a.max()),
            percentiles={k: float(v) for k, v in zip(keys, pct, strict=True)},
        )

    def get(self, stat: str) -> float | None:
        """A stat by name: mean, std, min, max, count, or a percentile such as p99 or p99.9."""
        if stat in ("mean", "std", "min", "max", "count"):
            return getattr(self, stat)
        key = percentile_key(float(stat[1:])) if stat.startswith("p") and _is_number(stat[1:]) else stat
        if key not in self.percentiles:
            raise KeyError(
                f"stat {stat!r} was not computed (have mean, std, min, max, count, {self._pkeys()})"
            )
        return self.percentiles[key]

    def _pkeys(self) -> str:
        return ", ".join(self.percentiles) or "no percentiles"


@dataclass(frozen=True)
class TokenCheck:
    """Server usage.completion_tokens vs the client tokenizer's count of the same text."""

    num_compared: int  # completed requests with both counts known
    num_mismatched: int  # ... whose counts differ
    max_rel_diff: float | None  # max |server - client| / server over those; None if none compared


@dataclass(frozen=True)
class Summary:
    num_total: int  # requests in the run
    num_completed: int  # streamed text and ended without error (RequestRecord.ok)
    num_failed: int  # num_total - num_completed
    errors: dict[str, int]  # failed requests by kind ("http_503", "timeout", ..., "no_output")
    error_rate: float | None  # num_failed / num_total
    duration_s: float | None  # first dispatch (any request) -> last completion; None if none completed
    num_prompt_tokens: int  # completed requests: usage.prompt_tokens, else the client's prompt_len
    num_output_tokens: int  # completed requests: usage.completion_tokens (RequestRecord.num_output_tokens)
    request_throughput: float | None  # completed requests / s
    output_throughput: float | None  # output tokens / s
    total_token_throughput: float | None  # (prompt + output) tokens / s
    goodput: float | None  # completed requests meeting every per-request SLO / s
    goodput_slos: tuple[str, ...]  # the SLOs goodput was judged on; empty: goodput == request_throughput
    ttft_ms: Stats
    tpot_ms: Stats  # requests with more than one output token
    itl_ms: Stats  # pooled over every gap of every completed request
    e2e_ms: Stats
    output_tokens: Stats  # per completed request
    client_lag_ms: Stats  # sent - scheduled over every sent request (p99 always): did the client keep up?
    token_check: TokenCheck
    percentiles: tuple[float, ...]  # those computed for every Stats above

    def value(self, metric: str, stat: str | None = None) -> float | None:
        """One number by name: ("ttft_ms", "p99"), ("tpot_ms", "mean"), ("goodput", None).
        None means not measurable (e.g. no completed request); unknown names raise KeyError."""
        field = getattr(self, metric, None)
        if isinstance(field, Stats):
            if stat is None:
                raise KeyError(f"metric {metric!r} needs a stat (mean, p99, ...)")
            return field.get(stat)
        if metric in _SCALARS:
            if stat is not None:
                raise KeyError(f"metric {metric!r} takes no stat, got {stat!r}")
            return field
        raise KeyError(f"unknown metric {metric!r}")

    def to_dict(self) -> dict:
        return asdict(self)


_SCALARS = (
    "error_rate",
    "duration_s",
    "request_throughput",
    "output_throughput",
    "total_token_throughput",
    "goodput",
    "num_total",
    "num_completed",
    "num_failed",
    "num_prompt_tokens",
    "num_output_tokens",
)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _dispatch(r: RequestRecord) -> float:
    # A request that never went out (connect refused before sending) still had its turn.
    return r.sent if r.sent is not None else r.scheduled


def _prompt_tokens(r: RequestRecord) -> int:
    if r.prompt_tokens is not None:
        return r.prompt_tokens
    return r.prompt_len or 0


def _token_check(done: list[RequestRecord]) -> TokenCheck:
    pairs = [
        (r.output_tokens, r.client_output_tokens)
        for r in done
        if r.output_tokens is not None and r.client_output_tokens is not None
    ]
    if not pairs:
        return TokenCheck(0, 0, None)
    # Relative to the server count, the one metrics use; max(.., 1) keeps 0 tokens finite.
    rel = [abs(s - c) / max(s, 1) for s, c in pairs]
    return TokenCheck(len(pairs), sum(s != c for s, c in pairs), max(rel))


def summarize(
    records: Sequence[RequestRecord],
    *,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    slos: Sequence[SLO] = (),
) -> Summary:
    """Everything the report and the SLO gates need from one run.

    Percentiles named by `slos` are computed as well as `percentiles`, so every SLO can be
    checked against the Summary. Duration runs from the first dispatch of ANY request (a
    request that failed still occupied the run) to the last end of a COMPLETED one (a failed
    request has no completion); with no completed request it, and every rate, is None.
    """
    wanted = {float(p) for p in percentiles}
    wanted |= {float(s.stat[1:]) for s in slos if s.stat and s.stat.startswith("p")}
    pcts = tuple(sorted(wanted))

    done = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    errors = dict(Counter(r.error or NO_OUTPUT for r in failed))

    ends = [r.end for r in done if r.end is not None]
    duration = max(ends) - min(_dispatch(r) for r in records) if ends else None
    num_prompt = sum(_prompt_tokens(r) for r in done)
    num_output = sum(r.num_output_tokens for r in done)
    gated = [s for s in slos if s.is_per_request]
    num_good = sum(per_request_ok(r, gated) for r in done)

    def rate(n: float) -> float | None:
        return n / duration if duration is not None and duration > 0 else None

    return Summary(
        num_total=len(records),
        num_completed=len(done),
        num_failed=len(failed),
        errors=errors,
        error_rate=len(failed) / len(records) if records else None,
        duration_s=duration,
        num_prompt_tokens=num_prompt,
        num_output_tokens=num_output,
        request_throughput=rate(len(done)),
        output_throughput=rate(num_output),
        total_token_throughput=rate(num_prompt + num_output),
        goodput=rate(num_good),
        goodput_slos=tuple(s.text for s in gated),
        ttft_ms=Stats.of([r.ttft for r in done if r.ttft is not None], pcts, 1000),
        tpot_ms=Stats.of([r.tpot for r in done if r.tpot is not None], pcts, 1000),
        itl_ms=Stats.of([g for r in done for g in r.itl()], pcts, 1000),
        e2e_ms=Stats.of([r.e2e for r in done if r.e2e is not None], pcts, 1000),
        output_tokens=Stats.of([r.num_output_tokens for r in done], pcts),
        client_lag_ms=Stats.of(
            [r.sent - r.scheduled for r in records if r.sent is not None], sorted(wanted | {99.0}), 1000
        ),
        token_check=_token_check(done),
        percentiles=pcts,
    )
