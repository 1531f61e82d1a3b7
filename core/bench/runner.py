"""run_benchmark: one benchmark from a frozen BenchConfig to a BenchResult (records, summary,
SLO verdicts, what ran where). The CLI renders it; nothing here prints.

Targets: `url` (any OpenAI-compatible server, through http_client) or `model` (our engine
in this process, through engine_target, no HTTP). The workload is tokenized with the
model's own tokenizer in-process; for a server, with `tokenizer` if given, else the served
model's name when it resolves as a model reference (our alias, a local path), else the
default model's tokenizer (said so in the result: lengths are then approximate).
"""

import asyncio
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version

from ..errors import LlmtoolError, UsageError
from .http_client import ClientConfig, OpenAIClient
from .load import LoadConfig, LoadResult, Progress, run_load
from .metrics import DEFAULT_PERCENTILES, Summary, summarize
from .records import RequestRecord
from .slo import SLO, Violation, error_gate, evaluate, parse_slo
from .workload import Request, WorkloadConfig, build_requests

log = logging.getLogger("llmtool.bench")


@dataclass(frozen=True)
class BenchConfig:
    url: str | None = None  # an OpenAI-compatible server; None: our engine in-process
    model: str | None = None  # in-process: the model reference; with url: the model name to request
    endpoint: str = "completions"  # or "chat"
    api_key: str | None = None
    tokenizer: str | None = None  # model reference whose tokenizer builds the workload (url targets)
    dtype: str = "auto"  # in-process
    load: LoadConfig = field(default_factory=lambda: LoadConfig(num_requests=32, concurrency=4))
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    timeout: float = 600.0  # seconds per request
    ignore_eos: bool = True  # fixed output lengths, where the server supports it
    temperature: float = 0.0
    slos: tuple[str, ...] = ()
    max_error_rate: float = 0.0  # share of failed requests a run tolerates before it fails (slo.error_gate)
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES

    def parsed_slos(self) -> list[SLO]:
        return [parse_slo(text) for text in self.slos]


@dataclass
class BenchResult:
    config: BenchConfig
    target: dict  # what was measured: kind, url or model, served name, tokenizer, engine figures
    records: list[RequestRecord]
    summary: Summary
    violations: list[Violation]
    aborted: bool
    environment: dict = field(default_factory=dict)
    error_violation: Violation | None = None  # failed requests beyond config.max_error_rate

    @property
    def failed(self) -> bool:
        """Whether the run misses its gates: an SLO, or more failed requests than allowed."""
        return bool(self.violations) or self.error_violation is not None

    def to_dict(self) -> dict:
        return _json_safe(
            {
                "config": _config_dict(self.config),
                "target": self.target,
                "environment": self.environment,
                "aborted": self.aborted,
                "summary": self.summary.to_dict(),
                "slo": [{"slo": v.slo.text, "value": v.value, "message": v.message} for v in self.violations],
                "failed_requests": None if self.error_violation is None else self.error_violation.message,
                "records": [r.to_dict() for r in self.records],
            }
        )


def run_benchmark(config: BenchConfig, progress: Progress | None = None) -> BenchResult:
    """Run it; Ctrl-C stops the requests in flight and returns what finished (aborted=True)."""
    return run_sweep(config, [config.load], progress)[0]


def run_sweep(
    config: BenchConfig,
    loads: list[LoadConfig],
    progress: Progress | None = None,
    stop_on_slo: bool = False,
    on_step: Callable[[BenchResult], None] | None = None,
) -> list[BenchResult]:
    """One run per load (e.g. concurrency 1, 2, 4, ...) on one target set up once; each step
    gets prompts of its own, so no step is flattered by the prefix cache of an earlier one.
    stop_on_slo: stop after the first step that violates an SLO or fails too many requests.
    Stops after an aborted step."""
    slos = config.parsed_slos()  # bad SLO text fails before anything loads
    if config.url is not None:
        return asyncio.run(_sweep_http(config, loads, slos, progress, stop_on_slo, on_step))
    return _sweep_in_process(config, loads, slos, progress, stop_on_slo, on_step)


def count_output_tokens(records: list[RequestRecord], tokenizer) -> None:
    """The client tokenizer's count of each output text, after the run (never on the timed
    path): the cross-check of the server's usage that the summary reports when they differ."""
    for record in records:
        if record.output_text:
            record.client_output_tokens = len(tokenizer.encode(record.output_text, add_special_tokens=False))


async def _run_steps(config, loads, slos, progress, stop_on_slo, on_step, make_target, tokenizer, what):
    results: list[BenchResult] = []
    offset = 0
    for load in loads:
        step_config = replace(config, load=load)
        target = make_target(load, offset)
        loaded = await run_load(target, load, progress)
        count_output_tokens(loaded.records, tokenizer)
        result = _finish(step_config, slos, loaded, what)
        results.append(result)
        if on_step is not None:
            on_step(result)
        offset += _num_items(load)
        if result.aborted or (stop_on_slo and result.failed):
            break
    return results


async def _sweep_http(config, loads, slos, progress, stop_on_slo, on_step) -> list[BenchResult]:
    width = max((load.concurrency or load.max_concurrency or 0) for load in loads) or None
    client_config = ClientConfig(
        base_url=config.url,
        endpoint=config.endpoint,
        model=config.model,
        api_key=config.api_key,
        timeout=config.timeout,
        max_connections=width,
        ignore_eos=config.ignore_eos,
        temperature=config.temperature,
    )
    async with OpenAIClient(client_config) as client:
        info = await client.probe()
        tokenizer, tokenizer_name = _client_tokenizer(config.tokenizer, info.model)
        requests = _requests(config, loads, tokenizer)

        def make_target(load: LoadConfig, offset: int):
            def target(index: int, scheduled: float, t0: float):
                r = requests[(offset + index) % len(requests)]
                return client.send(index, r.prompt, r.output_len, scheduled, t0, prompt_len=r.prompt_len)

            return target

        what = {"kind": "http", "url": config.url, "endpoint": config.endpoint, "model": info.model}
        what["tokenizer"] = tokenizer_name
        return await _run_steps(
            config, loads, slos, progress, stop_on_slo, on_step, make_target, tokenizer, what
        )


def _sweep_in_process(config, loads, slos, progress, stop_on_slo, on_step) -> list[BenchResult]:
    from ..engine.async_engine import AsyncEngine, build_off_main_thread
    from ..engine.config import EngineConfig
    from ..engine.engine import Engine
    from ..models.aliases import DEFAULT_MODEL
    from ..runtime import dtype_name
    from .engine_target import EngineTarget

    model = config.model or DEFAULT_MODEL
    width = max((load.concurrency or load.max_concurrency or 64) for load in loads)
    engine_config = EngineConfig(model=model, dtype=config.dtype, max_num_seqs=max(64, min(width, 256)))
    engine = build_off_main_thread(lambda: Engine(engine_config))
    tokenizer = engine.loaded.require_tokenizer()
    requests = _requests(config, loads, tokenizer)
    target_impl = EngineTarget(
        AsyncEngine(engine), tokenizer, chat=config.endpoint == "chat", ignore_eos=config.ignore_eos,
        temperature=config.temperature,
    )  # fmt: skip
    what = {
        "kind": "in-process",
        "model": model,
        "dtype": dtype_name(engine.loaded.dtype),
        "device": str(engine.loaded.device),
        "kv_cache_tokens": engine.capacity_tokens,
        "max_num_seqs": engine.config.max_num_seqs,
        "tokenizer": model,
    }

    def make_target(load: LoadConfig, offset: int):
        def target(index: int, scheduled: float, t0: float):
            r = requests[(offset + index) % len(requests)]
            return target_impl.send(index, r.prompt, r.output_len, scheduled, t0, prompt_len=r.prompt_len)

        return target

    async def main() -> list[BenchResult]:
        async with target_impl.engine:
            return await _run_steps(
                config, loads, slos, progress, stop_on_slo, on_step, make_target, tokenizer, what
            )

    results = asyncio.run(main())
    stats = engine.stats()
    what["prefix_cache_hit_rate"] = (
        stats.prefix_cache_hits / stats.prefix_cache_queries if stats.prefix_cache_queries else None
    )
    what["preemptions"] = stats.num_preemptions
    return results


def _num_items(load: LoadConfig) -> int:
    """Workload items one run of `load` may take: warm-up first, then the measured ones; a
    duration-bound run gets a generous number and cycles beyond it."""
    return load.warmup + (load.num_requests or max(256, 4 * (load.concurrency or 1)))


def _requests(config: BenchConfig, loads: list[LoadConfig], tokenizer) -> list[Request]:
    count = sum(_num_items(load) for load in loads)
    return build_requests(replace(config.workload, num_requests=count), tokenizer)


def _client_tokenizer(reference: str | None, served: str):
    from ..models.aliases import DEFAULT_MODEL
    from ..models.resolve import SourceFormat, resolve_model
    from ..models.tokenizer import has_tokenizer, load_tokenizer_dir, load_tokenizer_gguf

    for ref in (reference, served):
        if ref is None:
            continue
        try:
            source = resolve_model(ref)
        except LlmtoolError:
            if ref is reference:
                raise
            continue
        if source.format is SourceFormat.GGUF:
            return load_tokenizer_gguf(source.path), ref
        if has_tokenizer(source.path):
            return load_tokenizer_dir(source.path), ref
        if ref is reference:
            raise UsageError(f"--tokenizer {ref}: no tokenizer files there")
    source = resolve_model(DEFAULT_MODEL)
    log.warning("no tokenizer for '%s': lengths are counted with %s's", served, DEFAULT_MODEL)
    return load_tokenizer_gguf(source.path), f"{DEFAULT_MODEL} (fallback: pass --tokenizer)"


def _finish(config: BenchConfig, slos: list[SLO], result: LoadResult, target: dict) -> BenchResult:
    summary = summarize(result.records, percentiles=config.percentiles, slos=slos)
    return BenchResult(
        config=config,
        target=target,
        records=result.records,
        summary=summary,
        violations=evaluate(summary, slos),
        aborted=result.aborted,
        environment=environment(),
        error_violation=error_gate(summary, config.max_error_rate),
    )


def environment() -> dict:
    def pkg(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import os

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "llmtool": pkg("llmtool"),
        "python": platform.python_version(),
        "torch": pkg("torch"),
        "httpx": pkg("httpx"),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
    }


def _config_dict(config: BenchConfig) -> dict:
    out = asdict(config)
    if out.get("api_key"):
        out["api_key"] = "***"  # never write a secret into a results file
    if out["workload"].get("dataset") is not None:
        out["workload"]["dataset"] = str(out["workload"]["dataset"])
    return out


def _json_safe(value):
    """JSON has no Infinity or NaN: an infinite rate or burstiness is written as "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else "-inf" if value < 0 else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
