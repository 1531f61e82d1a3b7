"""Prometheus metrics without prometheus_client: Counter, Gauge and Histogram, a Registry that
renders the text exposition format 0.0.4, and ServerMetrics, the server's own set under vLLM's
names with the prefix `llmtool:`.

Every metric has its own lock, so request handlers and the /metrics handler may run on any
thread. Label values are given as a tuple in the order of the metric's label names. Not here:
the HTTP handler (it serves `render()` with CONTENT_TYPE) and any scraping or push logic.
"""

import bisect
import math
import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "llmtool:"
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

# vLLM's buckets (seconds). Inter-token latency adds 1, 2.5 and 5 ms below vLLM's 10 ms floor:
# a CPU decode step of a small model takes 5-15 ms, and vLLM's first bucket would hide it.
_TTFT = "0.001 0.005 0.01 0.02 0.04 0.06 0.08 0.1 0.25 0.5 0.75 1 2.5 5 7.5 10 20 40 80 160 640 2560"
_ITL = "0.001 0.0025 0.005 0.01 0.025 0.05 0.075 0.1 0.15 0.2 0.3 0.4 0.5 0.75 1 2.5 5 7.5 10 20 40 80"
_E2E = "0.3 0.5 0.8 1 1.5 2 2.5 5 10 15 20 30 40 50 60 120 240 480 960 1920 7680"
TTFT_BUCKETS, ITL_BUCKETS, E2E_BUCKETS = (tuple(map(float, b.split())) for b in (_TTFT, _ITL, _E2E))


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()):
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__") or label == "le":
                raise ValueError(f"invalid label name {label!r} for {name}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._values: dict[tuple[str, ...], Any] = {}  # label values -> state
        if not self.labelnames:
            self._values[()] = self._zero()  # an unlabelled metric shows 0 before its first use

    def _zero(self) -> Any:
        return 0.0

    def _key(self, labels: Sequence[Any]) -> tuple[str, ...]:
        if isinstance(labels, str):
            raise TypeError(f"{self.name}: labels are a tuple of values, not a string")
        key = tuple(str(v) for v in labels)
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {key}")
        return key

    def touch(self, labels: Sequence[Any] = ()) -> None:
        """Make a label set appear (at zero) before anything is recorded for it."""
        key = self._key(labels)
        with self._lock:
            if key not in self._values:
                self._values[key] = self._zero()

    def value(self, labels: Sequence[Any] = ()) -> float:
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def render(self) -> list[str]:
        with self._lock:
            snapshot = {key: self._copy(state) for key, state in self._values.items()}
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for key in sorted(snapshot):
            lines += self._samples(key, snapshot[key])
        return lines

    def _copy(self, state: Any) -> Any:
        return state

    def _samples(self, key: tuple[str, ...], state: Any) -> list[str]:
        return [f"{self.name}{self._labels(key)} {format_value(state)}"]

    def _labels(self, key: tuple[str, ...], extra: tuple[tuple[str, str], ...] = ()) -> str:
        pairs = (*zip(self.labelnames, key, strict=True), *extra)
        if not pairs:
            return ""
        return "{" + ",".join(f'{n}="{_escape_label(v)}"' for n, v in pairs) + "}"


class Counter(_Metric):
    """Only goes up. Name it with the `_total` suffix: the name is exposed as given."""

    kind = "counter"

    def inc(self, amount: float = 1.0, labels: Sequence[Any] = ()) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot decrease (inc by {amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def set_total(self, total: float, labels: Sequence[Any] = ()) -> None:
        """Mirror a monotonic total kept elsewhere (the engine's); a lower total is an error."""
        key = self._key(labels)
        with self._lock:
            current = self._values.get(key, 0.0)
            if total < current:
                raise ValueError(f"{self.name}: total went down from {current} to {total}")
            self._values[key] = float(total)


class Gauge(_Metric):
    kind = "gauge"

    def set(self, value: float, labels: Sequence[Any] = ()) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, labels: Sequence[Any] = ()) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, amount: float = 1.0, labels: Sequence[Any] = ()) -> None:
        self.inc(-amount, labels)


class Histogram(_Metric):
    """Cumulative buckets `le`, plus `_sum` and `_count`; `+Inf` is always the last bucket."""

    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = (), buckets: Iterable[float] = ()):
        bounds = sorted(float(b) for b in buckets)
        if not bounds or len(set(bounds)) != len(bounds) or any(math.isnan(b) for b in bounds):
            raise ValueError(f"{name}: buckets must be distinct numbers, at least one")
        self.bounds = tuple(bounds if math.isinf(bounds[-1]) else [*bounds, math.inf])
        super().__init__(name, help, labelnames)

    def _zero(self) -> list:
        return [[0] * len(self.bounds), 0.0, 0]  # per-bucket (not cumulative) counts, sum, count

    def _copy(self, state: list) -> list:
        return [list(state[0]), state[1], state[2]]

    def observe(self, value: float, labels: Sequence[Any] = ()) -> None:
        if math.isnan(value):
            raise ValueError(f"{self.name}: cannot observe NaN")
        key = self._key(labels)
        i = bisect.bisect_left(self.bounds, value)  # the first bound >= value: `le` is inclusive
        with self._lock:
            state = self._values.get(key)
            if state is None:
                state = self._values[key] = self._zero()
            state[0][i] += 1
            state[1] += value
            state[2] += 1

    def snapshot(self, labels: Sequence[Any] = ()) -> tuple[list[tuple[float, int]], float, int]:
        """([(le, cumulative count)], sum, count) for one label set."""
        key = self._key(labels)
        with self._lock:
            counts, total, count = self._copy(self._values.get(key) or self._zero())
        running, buckets = 0, []
        for bound, c in zip(self.bounds, counts, strict=True):
            running += c
            buckets.append((bound, running))
        return buckets, total, count

    def value(self, labels: Sequence[Any] = ()) -> float:
        """The number of observations."""
        return float(self.snapshot(labels)[2])

    def _samples(self, key: tuple[str, ...], state: list) -> list[str]:
        counts, total, count = state
        lines, running = [], 0
        for bound, c in zip(self.bounds, counts, strict=True):
            running += c
            labels = self._labels(key, (("le", format_value(bound)),))
            lines.append(f"{self.name}_bucket{labels} {format_value(running)}")
        lines.append(f"{self.name}_sum{self._labels(key)} {format_value(total)}")
        lines.append(f"{self.name}_count{self._labels(key)} {format_value(count)}")
        return lines


class Registry:
    def __init__(self):
        self._lock = threading.Lock()
        self._metrics: dict[str, _Metric] = {}

    def register(self, metric: _Metric) -> Any:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} is already registered")
            self._metrics[metric.name] = metric
        return metric

    def render(self) -> str:
        """The text exposition format 0.0.4, in registration order."""
        with self._lock:
            metrics = list(self._metrics.values())
        return "".join(line + "\n" for metric in metrics for line in metric.render())


class ServerMetrics:
    """The server's metrics, vLLM's names under `llmtool:`. Engine metrics carry a model_name
    label, as vLLM's do; http_requests_total is labelled by status code alone."""

    def __init__(self, model_name: str, registry: Registry | None = None, speculative: bool = False):
        self.registry = registry or Registry()
        self._model = (model_name,)
        h, c, g = self._histogram, self._counter, self._gauge
        self.time_to_first_token = h("time_to_first_token_seconds", "Time to first token (s).", TTFT_BUCKETS)
        self.inter_token_latency = h("inter_token_latency_seconds", "Time between tokens (s).", ITL_BUCKETS)
        self.e2e_request_latency = h("e2e_request_latency_seconds", "Request latency (s).", E2E_BUCKETS)
        self.prompt_tokens = c("prompt_tokens_total", "Prompt tokens of ended requests.")
        self.generation_tokens = c("generation_tokens_total", "Generated tokens of ended requests.")
        self.num_requests_running = g("num_requests_running", "Requests in the running batch.")
        self.num_requests_waiting = g("num_requests_waiting", "Requests waiting to be scheduled.")
        self.kv_cache_usage = g("kv_cache_usage_perc", "Fraction of KV cache blocks in use (1 = full).")
        self.prefix_cache_queries = c(
            "prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache."
        )
        self.prefix_cache_hits = c("prefix_cache_hits_total", "Prompt tokens found in the prefix cache.")
        self.num_preemptions = c("num_preemptions_total", "Requests preempted (blocks freed, recomputed).")
        self.speculative = speculative
        if speculative:  # vLLM's spec_decode_* names; absent when speculation is off, as in vLLM
            self._register_spec_metrics()
        reasons = ("model_name", "finished_reason")
        self.request_success = self.registry.register(
            Counter(f"{PREFIX}request_success_total", "Ended requests by finish reason.", reasons)
        )
        self.http_requests = self.registry.register(
            Counter(f"{PREFIX}http_requests_total", "HTTP responses by status code.", ("status",))
        )

    def _register_spec_metrics(self) -> None:
        c, g = self._counter, self._gauge
        self.spec_num_drafts = c("spec_decode_num_drafts_total", "Decode steps that verified drafted tokens.")
        self.spec_num_draft_tokens = c("spec_decode_num_draft_tokens_total", "Drafted tokens verified.")
        self.spec_num_accepted_tokens = c(
            "spec_decode_num_accepted_tokens_total", "Drafted tokens the target accepted."
        )
        self.spec_num_emitted_tokens = c(
            "spec_decode_num_emitted_tokens_total", "Tokens verifying steps produced (accepted + one each)."
        )
        self.spec_acceptance_rate = g(
            "spec_decode_draft_acceptance_rate", "Accepted / drafted tokens, so far."
        )
        self.spec_mean_accepted_length = g(
            "spec_decode_mean_accepted_length", "Tokens per verifying step, so far (1 = no gain)."
        )

    # Each per-model series is touched at once, so it is on the first scrape (at zero).
    def _histogram(self, name: str, help: str, buckets: tuple[float, ...]) -> Histogram:
        return self._model_metric(Histogram(PREFIX + name, help, ("model_name",), buckets))

    def _counter(self, name: str, help: str) -> Counter:
        return self._model_metric(Counter(PREFIX + name, help, ("model_name",)))

    def _gauge(self, name: str, help: str) -> Gauge:
        return self._model_metric(Gauge(PREFIX + name, help, ("model_name",)))

    def _model_metric(self, metric):
        self.registry.register(metric).touch(self._model)
        return metric

    def observe_request(
        self,
        *,
        num_prompt_tokens: int,
        num_generation_tokens: int,
        e2e_latency: float,
        ttft: float | None = None,
        inter_token_latencies: Iterable[float] = (),
        finished_reason: str | None = None,
    ) -> None:
        """Record one request once it has ended (finished, aborted or failed). ttft is None when
        no token came; inter_token_latencies are the gaps between its consecutive tokens."""
        m = self._model
        self.prompt_tokens.inc(num_prompt_tokens, m)
        self.generation_tokens.inc(num_generation_tokens, m)
        self.e2e_request_latency.observe(e2e_latency, m)
        if ttft is not None:
            self.time_to_first_token.observe(ttft, m)
        for gap in inter_token_latencies:
            self.inter_token_latency.observe(gap, m)
        if finished_reason is not None:
            self.request_success.inc(1, (*m, finished_reason))

    def observe_http(self, status: int) -> None:
        self.http_requests.inc(1, (status,))

    def update_from_stats(self, stats) -> None:
        """Copy the engine's gauges and totals (an EngineStats or AsyncEngineStats)."""
        m = self._model
        self.num_requests_running.set(stats.num_running, m)
        self.num_requests_waiting.set(stats.num_waiting, m)
        self.kv_cache_usage.set(stats.kv_cache_usage, m)
        self.prefix_cache_queries.set_total(stats.prefix_cache_queries, m)
        self.prefix_cache_hits.set_total(stats.prefix_cache_hits, m)
        self.num_preemptions.set_total(stats.num_preemptions, m)
        if not self.speculative:
            return
        drafts, drafted = stats.spec_num_verify_steps, stats.spec_num_draft_tokens
        accepted, emitted = stats.spec_num_accepted_tokens, stats.spec_num_emitted_tokens
        self.spec_num_drafts.set_total(drafts, m)
        self.spec_num_draft_tokens.set_total(drafted, m)
        self.spec_num_accepted_tokens.set_total(accepted, m)
        self.spec_num_emitted_tokens.set_total(emitted, m)
        self.spec_acceptance_rate.set(accepted / drafted if drafted else 0.0, m)
        self.spec_mean_accepted_length.set(emitted / drafts if drafts else 0.0, m)

    def render(self) -> str:
        return self.registry.render()
