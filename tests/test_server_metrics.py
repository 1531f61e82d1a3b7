"""Prometheus metrics: render() parses back as text format 0.0.4 (HELP and TYPE before samples,
escaped labels, cumulative monotonic buckets ending in +Inf equal to _count), counters and
histograms stay exact under concurrent threads, and ServerMetrics exposes vLLM's names."""

import math
import re
import threading

import pytest

from llmtool.core.server.metrics import (
    CONTENT_TYPE,
    Counter,
    Gauge,
    Histogram,
    Registry,
    ServerMetrics,
)

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _value(text: str) -> float:
    return {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}.get(text) or float(text)


def parse(text: str) -> dict:
    """A strict little reader of the text format: {family: {"help", "type", "samples": [(name, labels, value)]}}."""
    assert text.endswith("\n")
    families: dict[str, dict] = {}
    family = None  # the name of the family whose lines we are in
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            family, _, help_text = line[len("# HELP ") :].partition(" ")
            assert family not in families, f"family {family} appears twice"
            help_text = re.sub(r"\\[\\n]", lambda e: _UNESCAPE[e[0]], help_text)
            families[family] = {"help": help_text, "samples": []}
        elif line.startswith("# TYPE "):
            name, kind = line[len("# TYPE ") :].split(" ")
            assert name == family and "type" not in families[name], "TYPE must follow its HELP"
            families[name]["type"] = kind
        else:
            match = _SAMPLE.fullmatch(line)
            assert match and family is not None, f"not a sample line of a family: {line!r}"
            name, raw_labels, value = match.groups()
            suffixes = ("_bucket", "_sum", "_count") if families[family]["type"] == "histogram" else ("",)
            assert name in {family + s for s in suffixes}, f"{name} outside its family {family}"
            labels, pos = {}, 0
            while raw_labels and pos < len(raw_labels):
                m = _LABEL.match(raw_labels, pos)
                assert m, f"bad labels: {raw_labels!r}"
                labels[m[1]] = re.sub(r'\\[\\"n]', lambda e: _UNESCAPE[e[0]], m[2])
                pos = m.end()
            families[family]["samples"].append((name, labels, _value(value)))
    return families


def samples(family: dict, name: str, **labels) -> list[tuple[dict, float]]:
    return [(lab, v) for n, lab, v in family["samples"] if n == name and labels.items() <= lab.items()]


def test_counter_and_gauge_render():
    reg = Registry()
    requests = reg.register(Counter("app_requests_total", "Requests.", ("code",)))
    temp = reg.register(Gauge("app_temperature", "Temperature.\nSecond line \\ backslash."))
    plain = reg.register(Counter("app_plain_total", "Unlabelled."))
    requests.inc(labels=("200",))
    requests.inc(2.5, labels=(404,))
    temp.set(3)
    temp.inc(2)
    temp.dec(0.5)
    out = parse(reg.render())
    assert list(out) == ["app_requests_total", "app_temperature", "app_plain_total"]
    assert out["app_requests_total"]["type"] == "counter" and out["app_temperature"]["type"] == "gauge"
    assert samples(out["app_requests_total"], "app_requests_total") == [
        ({"code": "200"}, 1.0),
        ({"code": "404"}, 2.5),
    ]
    assert samples(out["app_temperature"], "app_temperature") == [({}, 4.5)]
    assert out["app_temperature"]["help"] == "Temperature.\nSecond line \\ backslash."
    assert samples(out["app_plain_total"], "app_plain_total") == [({}, 0.0)]  # shown before first use
    assert plain.value() == 0.0 and requests.value(("404",)) == 2.5
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_label_values_are_escaped():
    reg = Registry()
    c = reg.register(Counter("esc_total", "Escaping.", ("path", "other")))
    tricky = 'a "quoted" \\ back\nslash'
    c.inc(labels=(tricky, ""))
    text = reg.render()
    assert '\\"quoted\\"' in text and "\\n" in text and "\\\\" in text
    ((labels, value),) = samples(parse(text)["esc_total"], "esc_total")
    assert labels == {"path": tricky, "other": ""} and value == 1.0


def test_histogram_buckets_sum_count():
    reg = Registry()
    h = reg.register(Histogram("lat_seconds", "Latency.", ("route",), buckets=(1.0, 0.1, 10)))
    values = [0.05, 0.1, 0.2, 5.0, 1e9]
    for v in values:
        h.observe(v, ("/a",))
    h.observe(0.5, ("/b",))
    family = parse(reg.render())["lat_seconds"]
    assert family["type"] == "histogram"
    buckets = samples(family, "lat_seconds_bucket", route="/a")
    assert [(lab["le"], v) for lab, v in buckets] == [("0.1", 2), ("1.0", 3), ("10.0", 4), ("+Inf", 5)]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)  # cumulative: never decreasing
    assert samples(family, "lat_seconds_sum", route="/a") == [({"route": "/a"}, sum(values))]
    assert samples(family, "lat_seconds_count", route="/a") == [({"route": "/a"}, 5.0)]
    assert buckets[-1][1] == 5.0  # +Inf equals _count
    assert samples(family, "lat_seconds_bucket", route="/b", le="1.0") == [
        ({"route": "/b", "le": "1.0"}, 1.0)
    ]
    assert h.snapshot(("/b",)) == ([(0.1, 0), (1.0, 1), (10.0, 1), (math.inf, 1)], 0.5, 1)
    with pytest.raises(ValueError):
        h.observe(math.nan, ("/a",))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Counter("bad name", "x"),
        lambda: Counter("ok_total", "x", ("bad-label",)),
        lambda: Counter("ok_total", "x", ("__reserved",)),
        lambda: Histogram("h", "x", ("le",), buckets=(1,)),
        lambda: Histogram("h", "x", buckets=()),
        lambda: Histogram("h", "x", buckets=(1, 1)),
    ],
)
def test_invalid_definitions(make):
    with pytest.raises(ValueError):
        make()


def test_misuse_is_refused():
    c = Counter("c_total", "x", ("a",))
    with pytest.raises(ValueError):
        c.inc(-1, ("x",))
    with pytest.raises(ValueError):
        c.inc(1, ())  # wrong number of label values
    with pytest.raises(TypeError):
        c.inc(1, "x")  # a bare string, not a tuple
    c.set_total(10, ("x",))
    c.set_total(10, ("x",))
    with pytest.raises(ValueError):
        c.set_total(9, ("x",))
    reg = Registry()
    reg.register(Gauge("g", "x"))
    with pytest.raises(ValueError):
        reg.register(Gauge("g", "x"))


def test_concurrent_updates_are_exact():
    c = Counter("conc_total", "x", ("t",))
    g = Gauge("conc_gauge", "x")
    h = Histogram("conc_hist", "x", buckets=(0.5,))
    threads_n, per_thread = 8, 5000

    def work(i: int) -> None:
        for j in range(per_thread):
            c.inc(1, (i % 2,))
            g.inc()
            h.observe(0.25 if j % 2 else 1.0)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = threads_n * per_thread
    assert c.value(("0",)) + c.value(("1",)) == total and c.value(("0",)) == total / 2
    assert g.value() == total
    assert h.snapshot() == ([(0.5, total // 2), (math.inf, total)], total * 0.625, total)


def test_render_while_updating_stays_parseable():
    metrics = ServerMetrics("m")
    stop = threading.Event()

    def work():
        while not stop.is_set():
            metrics.observe_request(num_prompt_tokens=1, num_generation_tokens=2, e2e_latency=0.1, ttft=0.01)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        for _ in range(20):
            family = parse(metrics.render())["llmtool:e2e_request_latency_seconds"]
            counts = [v for _, v in samples(family, "llmtool:e2e_request_latency_seconds_bucket")]
            assert counts == sorted(counts)
            assert counts[-1] == samples(family, "llmtool:e2e_request_latency_seconds_count")[0][1]
    finally:
        stop.set()
        worker.join()


VLLM_NAMES = {
    "llmtool:time_to_first_token_seconds": "histogram",
    "llmtool:inter_token_latency_seconds": "histogram",
    "llmtool:e2e_request_latency_seconds": "histogram",
    "llmtool:prompt_tokens_total": "counter",
    "llmtool:generation_tokens_total": "counter",
    "llmtool:request_success_total": "counter",
    "llmtool:num_requests_running": "gauge",
    "llmtool:num_requests_waiting": "gauge",
    "llmtool:kv_cache_usage_perc": "gauge",
    "llmtool:prefix_cache_queries_total": "counter",
    "llmtool:prefix_cache_hits_total": "counter",
    "llmtool:num_preemptions_total": "counter",
    "llmtool:http_requests_total": "counter",
}


def test_server_metrics_names_and_zero_series_on_first_scrape():
    out = parse(ServerMetrics("smollm2-135m").render())
    assert {name: f["type"] for name, f in out.items()} == VLLM_NAMES
    assert samples(out["llmtool:num_requests_running"], "llmtool:num_requests_running") == [
        ({"model_name": "smollm2-135m"}, 0.0)
    ]
    assert samples(
        out["llmtool:time_to_first_token_seconds"], "llmtool:time_to_first_token_seconds_count"
    ) == [({"model_name": "smollm2-135m"}, 0.0)]


def test_observe_request_and_http():
    metrics = ServerMetrics("m")
    metrics.observe_request(
        num_prompt_tokens=200,
        num_generation_tokens=3,
        e2e_latency=0.4,
        ttft=0.2,
        inter_token_latencies=[0.007, 0.012],
        finished_reason="length",
    )
    metrics.observe_request(
        num_prompt_tokens=10, num_generation_tokens=0, e2e_latency=0.05, finished_reason="abort"
    )
    for status in (200, 200, 429, 400):
        metrics.observe_http(status)
    out = parse(metrics.render())

    def one(family: str, name: str | None = None, **labels) -> float:
        ((_, value),) = samples(out[family], name or family, **labels)
        return value

    assert one("llmtool:prompt_tokens_total") == 210 and one("llmtool:generation_tokens_total") == 3
    assert one("llmtool:time_to_first_token_seconds", "llmtool:time_to_first_token_seconds_count") == 1
    itl = "llmtool:inter_token_latency_seconds"
    assert one(itl, f"{itl}_count") == 2 and one(itl, f"{itl}_sum") == pytest.approx(0.019)
    assert one(itl, f"{itl}_bucket", le="0.01") == 1  # the 1-5 ms buckets below vLLM's floor exist
    assert one(itl, f"{itl}_bucket", le="0.005") == 0
    e2e = "llmtool:e2e_request_latency_seconds"
    assert one(e2e, f"{e2e}_count") == 2 and one(e2e, f"{e2e}_bucket", le="0.3") == 1
    assert one("llmtool:request_success_total", finished_reason="length") == 1
    assert one("llmtool:request_success_total", finished_reason="abort") == 1
    assert one("llmtool:http_requests_total", status="200") == 2
    assert one("llmtool:http_requests_total", status="429") == 1


def test_update_from_engine_stats():
    from llmtool.core.engine.async_engine import AsyncEngineStats
    from llmtool.core.engine.engine import EngineStats

    metrics = ServerMetrics("m")
    fields = dict(num_blocks=100, block_size=16, num_preemptions=2)
    metrics.update_from_stats(
        EngineStats(
            num_running=3,
            num_waiting=5,
            kv_cache_usage=0.25,
            prefix_cache_queries=64,
            prefix_cache_hits=32,
            **fields,
        )
    )
    metrics.update_from_stats(
        AsyncEngineStats(
            num_running=0,
            num_waiting=1,
            kv_cache_usage=0.0625,
            prefix_cache_queries=96,
            prefix_cache_hits=48,
            num_pending=1,
            **fields,
        )
    )
    out = parse(metrics.render())
    values = {n: f["samples"][0][2] for n, f in out.items() if f["type"] != "histogram" and f["samples"]}
    assert values["llmtool:num_requests_running"] == 0
    assert values["llmtool:num_requests_waiting"] == 1
    assert values["llmtool:kv_cache_usage_perc"] == 0.0625
    assert values["llmtool:prefix_cache_queries_total"] == 96
    assert values["llmtool:prefix_cache_hits_total"] == 48
    assert values["llmtool:num_preemptions_total"] == 2
    with pytest.raises(ValueError):  # an engine total never goes down
        metrics.update_from_stats(
            EngineStats(
                num_running=0,
                num_waiting=0,
                kv_cache_usage=0,
                prefix_cache_queries=1,
                prefix_cache_hits=0,
                **fields,
            )
        )
