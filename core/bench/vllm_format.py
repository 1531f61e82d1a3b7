"""vLLM's benchmark result shape: our run written as `vllm bench serve --save-result
--save-detailed` writes it, and a vLLM result read back as our summary (`bench compare`).

vLLM's file is one flat object (vllm/benchmarks/serve.py): run settings (date, backend,
model_id, tokenizer_id, num_prompts, request_rate, burstiness, max_concurrency), totals
(duration, completed, failed, total_input_tokens, total_output_tokens, the throughputs),
per-request lists in request order (input_lens, output_lens, ttfts, itls, latencies,
start_times, generated_texts, errors; seconds; a failed request has ttft 0, latency 0, no
itls, output_len 0 and its error text), and `{mean,median,std,pNN}_{ttft,tpot,itl,e2el}_ms`
for every requested percentile, pNN spelt p99 or p99.9. Without --save-detailed the
per-request lists are absent; by default vLLM states ttft, tpot and itl, and e2el only when
asked (--percentile-metrics), so a reader takes what is there.

Our figures keep our definitions (REFERENCE.md): TTFT and E2E from the scheduled send time,
ITL with a k-token chunk split into k gaps; vLLM times from the actual send and counts one
gap per chunk. On a client that keeps up the two agree. Not here: running anything.
"""

import math
import time

import numpy as np

from .records import RequestRecord
from .slo import percentile_key

METRICS = (("ttft", "ttft_ms"), ("tpot", "tpot_ms"), ("itl", "itl_ms"), ("e2el", "e2e_ms"))  # vLLM, ours


def to_vllm(result) -> dict:
    """A BenchResult as vLLM's --save-result --save-detailed JSON (a dict ready for json.dumps)."""
    config, load, summary, target = result.config, result.config.load, result.summary, result.target
    records = result.records
    done = [r for r in records if r.ok]
    out: dict = {
        "date": time.strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": _backend(target, config.endpoint),  # vLLM writes both names
        "backend": _backend(target, config.endpoint),
        "label": None,
        "model_id": target.get("model"),
        "tokenizer_id": target.get("tokenizer"),
        "num_prompts": summary.num_total,
        # A closed loop of N is vLLM's all-at-once rate capped at N in flight.
        "request_rate": _rate(load.rate) if load.rate is not None else "inf",
        "burstiness": _rate(load.burstiness),
        "max_concurrency": load.concurrency or load.max_concurrency,
        "duration": summary.duration_s,
        "completed": summary.num_completed,
        "failed": summary.num_failed,
        "total_input_tokens": summary.num_prompt_tokens,
        "total_output_tokens": summary.num_output_tokens,
        "request_throughput": summary.request_throughput,
        "request_goodput": summary.goodput if summary.goodput_slos else None,
        "output_throughput": summary.output_throughput,
        "total_token_throughput": summary.total_token_throughput,
        "input_lens": [r.prompt_tokens if r.prompt_tokens is not None else r.prompt_len for r in records],
        "output_lens": [r.num_output_tokens if r.ok else 0 for r in records],
        "ttfts": [r.ttft if r.ok else 0.0 for r in records],
        "itls": [r.itl() if r.ok else [] for r in records],
        "latencies": [r.e2e if r.ok else 0.0 for r in records],
        "start_times": [r.sent for r in records],
        "queue_times": [None if r.sent is None else r.sent - r.scheduled for r in records],
        "generated_texts": [r.output_text or "" for r in records],
        "errors": [_error_text(r) for r in records],
    }
    values = {
        "ttft": [r.ttft for r in done if r.ttft is not None],
        "tpot": [r.tpot for r in done if r.tpot is not None],
        "itl": [g for r in done for g in r.itl()],
        "e2el": [r.e2e for r in done if r.e2e is not None],
    }
    for name, seconds in values.items():
        out |= _stats(name, seconds, summary.percentiles)
    return out


def _backend(target: dict, endpoint: str) -> str:
    if target.get("kind") != "http":
        return "llmtool-engine"  # in-process: no HTTP backend of vLLM's describes it
    return "openai-chat" if endpoint == "chat" else "openai"


def _rate(value: float):
    return "inf" if math.isinf(value) else value  # vLLM's own spelling; JSON has no Infinity


def _error_text(record: RequestRecord) -> str:
    if record.ok:
        return ""
    return (
        f"{record.error or 'no_output'}: {record.error_detail}"
        if record.error_detail
        else record.error or "no_output"
    )


def _stats(name: str, seconds: list[float], percentiles) -> dict:
    """vLLM's mean/median/std/pNN keys in ms. With no value (every request failed) vLLM writes
    0; we write null, so no dashboard reads a failed run as a 0 ms one."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    empty = len(ms) == 0
    out = {
        f"mean_{name}_ms": None if empty else float(ms.mean()),
        f"median_{name}_ms": None if empty else float(np.median(ms)),
        f"std_{name}_ms": None if empty else float(ms.std()),
    }
    for p in percentiles:
        out[f"{percentile_key(p)}_{name}_ms"] = None if empty else float(np.percentile(ms, p))
    return out


def is_vllm(data) -> bool:
    return (
        isinstance(data, dict)
        and "completed" in data
        and any(f"mean_{name}_ms" in data for name, _ in METRICS)
    )


def from_vllm(data: dict) -> dict:
    """A vLLM result as our summary's shape, as far as it goes (what `bench compare` reads):
    throughputs, error rate, and each latency's mean, std and percentiles."""
    completed = data.get("completed")
    failed = data.get("failed")
    if failed is None and isinstance(data.get("errors"), list):
        failed = sum(1 for e in data["errors"] if e)
    total = (completed or 0) + (failed or 0) if completed is not None and failed is not None else None
    summary = {
        "num_total": total,
        "num_completed": completed,
        "num_failed": failed,
        "error_rate": failed / total if total else None,
        "duration_s": data.get("duration"),
        "request_throughput": data.get("request_throughput"),
        "output_throughput": data.get("output_throughput"),
        "total_token_throughput": data.get("total_token_throughput"),
        "goodput": data.get("request_goodput"),
    }
    for name, ours in METRICS:
        summary[ours] = _latency(data, name)
    return summary


def _latency(data: dict, name: str) -> dict:
    """vLLM's `{stat}_{name}_ms` keys as one of our Stats dicts; median is p50."""
    suffix = f"_{name}_ms"
    percentiles = {}
    for key, value in data.items():
        if key.startswith("p") and key.endswith(suffix):
            try:
                p = float(key[1 : -len(suffix)])
            except ValueError:
                continue
            percentiles[percentile_key(p)] = value
    if data.get(f"median{suffix}") is not None:
        percentiles.setdefault("p50", data[f"median{suffix}"])
    return {"mean": data.get(f"mean{suffix}"), "std": data.get(f"std{suffix}"), "percentiles": percentiles}
