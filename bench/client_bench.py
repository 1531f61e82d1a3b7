"""How exact is the load generator? llmtool bench vs GuideLLM, one run (make bench-client).

Both clients drive the same deterministic streaming server (tests/stream_server.py): every
request's first token leaves 50 ms after its body is read and each later token 10 ms after the
previous one, so the true TTFT is 50 ms and the true TPOT (and every ITL) 10 ms. Whatever a
client reports beyond that is its own overhead: connection handling, parsing, scheduling.
Each client runs as its CLI, alone on the machine, at concurrency 1, 16 and 64, 32 tokens out.
GuideLLM's TPOT includes the first token; its per-request inter_token_latency_ms is our TPOT
definition, so that is the figure compared. The server reports how late its own chunks left
(p99), so a run in which the server itself fell behind shows as such.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.common import machine_info, write_results
from tests.stream_server import StreamServer, StreamServerConfig

TTFT_MS, ITL_MS, OUTPUT_LEN = 50.0, 10.0, 32
LEVELS = {1: 20, 16: 160, 64: 384}  # concurrency -> measured requests
BIN = Path(sys.executable).parent


def run_ours(url: str, concurrency: int, n: int, out: Path) -> dict:
    command = [str(BIN / "llmtool"), "bench", "--url", url, "-c", str(concurrency), "-n", str(n)]
    command += ["--warmup", str(concurrency), "--input-len", "64", "--output-len", str(OUTPUT_LEN)]
    subprocess.run([*command, "--json", str(out)], check=True, capture_output=True, timeout=600)
    records = [r for r in json.loads(out.read_text())["records"] if r["error"] is None]
    ttft = [1e3 * (r["first_token"] - r["scheduled"]) for r in records]
    tpot = [1e3 * (r["end"] - r["first_token"]) / (r["output_tokens"] - 1) for r in records]
    return {"ttft_ms": ttft, "tpot_ms": tpot}


def run_guidellm(url: str, concurrency: int, n: int, tokenizer: Path, out: Path) -> dict:
    backend = f"kind=openai_http,target={url},model=m,request_format=/v1/completions,validate_backend=false"
    command = [str(BIN / "guidellm"), "run", "--backend", backend]
    command += ["--profile", f"kind=concurrent,streams={concurrency}"]
    command += ["--constraint", f"kind=max_requests,count={n + concurrency}"]
    command += ["--tokenizer", f"kind=huggingface_auto,model={tokenizer}"]
    command += ["--data", f"kind=synthetic_text,prompt_tokens=64,output_tokens={OUTPUT_LEN}"]
    command += ["--output", f"kind=json,path={out}", "--disable-console"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run(command, check=True, capture_output=True, timeout=600, env=env)
    records = json.loads(out.read_text())["benchmarks"][0]["requests"]["successful"]
    records = sorted(records, key=lambda r: r["info"]["timings"]["request_start"])[concurrency:]  # warm-up
    return {
        "ttft_ms": [r["time_to_first_token_ms"] for r in records],
        "tpot_ms": [r["inter_token_latency_ms"] for r in records],
    }


def errors(measured: dict) -> dict:
    """p50/p99 of the measured values minus the truth, ms."""
    out = {}
    for key, truth in (("ttft_ms", TTFT_MS), ("tpot_ms", ITL_MS)):
        a = np.asarray(measured[key], dtype=float)
        out[key] = {"n": len(a), "p50_err": float(np.percentile(a, 50) - truth), "p99_err": float(np.percentile(a, 99) - truth)}
    return out


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# Load-generator accuracy: llmtool bench vs GuideLLM",
        "",
        f"Both clients against a server whose true TTFT is {TTFT_MS:.0f} ms and true TPOT {ITL_MS:.0f} ms",
        f"({OUTPUT_LEN} tokens out). Error = measured - truth, ms (smaller is better). "
        f"{m['cpu']}, {m['cores']} cores; guidellm {data['guidellm_version']}, commit {m['llmtool_commit']}, {m['date']}.",
        "",
        "| concurrency | client | TTFT p50 err | TTFT p99 err | TPOT p50 err | TPOT p99 err | server late p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for level in data["levels"]:
        for client in ("llmtool", "guidellm"):
            e = level[client]
            lines.append(
                f"| {level['concurrency']} | {client} | {e['ttft_ms']['p50_err']:+.2f} | {e['ttft_ms']['p99_err']:+.2f} "
                f"| {e['tpot_ms']['p50_err']:+.3f} | {e['tpot_ms']['p99_err']:+.3f} | {level['server_late_p99_ms'][client]:.2f} |"
            )
    lines += ["", "Reproduce: `make bench-client`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="concurrency 1 and 16 only")
    args = parser.parse_args()
    from importlib.metadata import version

    from llmtool.core.models.aliases import ALIASES, alias_path
    from llmtool.core.models.tokenizer import load_tokenizer_gguf

    levels = {c: n for c, n in LEVELS.items() if not args.quick or c <= 16}
    data = {"machine": machine_info(), "guidellm_version": version("guidellm"), "levels": []}
    config = StreamServerConfig(ttft_ms=TTFT_MS, itl_ms=ITL_MS, output_tokens=OUTPUT_LEN)
    with tempfile.TemporaryDirectory() as tmp, StreamServer(config) as server:
        tmp = Path(tmp)
        tokenizer = tmp / "tokenizer"
        load_tokenizer_gguf(alias_path(ALIASES["smollm2-135m"]), fast=False).save_pretrained(tokenizer)
        for concurrency, n in levels.items():
            level = {"concurrency": concurrency, "requests": n, "server_late_p99_ms": {}}
            for client in ("llmtool", "guidellm"):
                server.stats(reset=True)
                out = tmp / f"{client}-{concurrency}.json"
                if client == "llmtool":
                    measured = run_ours(server.url, concurrency, n, out)
                else:
                    measured = run_guidellm(server.url, concurrency, n, tokenizer, out)
                level[client] = errors(measured)
                level["server_late_p99_ms"][client] = server.stats()["p99_ms"]
                print(f"c={concurrency} {client}: {level[client]}", flush=True)
            data["levels"].append(level)
    write_results("client", data, markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
