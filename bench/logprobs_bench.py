"""What full-precision logits and prompt logprobs cost, measured in one run (issue 23).

The default model in bf16 (where fp32 logits change anything: an fp32 model's head is fp32
already), on the engine directly, greedy, EOS ignored. Three comparisons, each run in
interleaved rounds (A, B, A, B, ...) so a busy machine hurts both sides alike; medians:
- TPOT at concurrency 1: logits rounded to bf16 (the head's own output) vs fp32 (LogitsHead);
- output tok/s at concurrency 32 (all requests at once), the same two;
- prefill tok/s (prompts of 512 tokens, one output token each) with prompt logprobs on vs off.
Run: `.venv/bin/python -P bench/run.py logprobs_bench` (results in bench/results/logprobs.*).
"""

import argparse
import os
import statistics
import time

from bench.common import machine_info, write_results
from bench.engine_bench import make_prompts
from llmtool.core.engine.config import EngineConfig
from llmtool.core.engine.engine import Engine
from llmtool.core.engine.sampling_params import SamplingParams
from llmtool.core.models.aliases import DEFAULT_MODEL
from llmtool.core.models.loader import load_model
from llmtool.core.runtime import configure_threads, cpu_flags


def timed_run(engine: Engine, prompts: list[list[int]], params: SamplingParams) -> dict:
    """All prompts at once; seconds, tokens, TPOT per request (engine clock)."""
    start = time.perf_counter()
    done = engine.generate(prompts, params)
    seconds = time.perf_counter() - start
    tpot = [
        (c.token_times[-1] - c.token_times[0]) / (len(c.token_times) - 1)
        for c in done
        if len(c.token_times) > 1
    ]
    return {
        "seconds": seconds,
        "output_tokens": sum(len(c.token_ids) for c in done),
        "prompt_tokens": sum(len(p) for p in prompts),
        "tpot_ms": 1000 * statistics.median(tpot) if tpot else None,
    }


def interleaved(engines: dict[str, Engine], prompts, params: dict[str, SamplingParams], rounds: int) -> dict:
    runs: dict[str, list[dict]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            runs[name].append(timed_run(engine, prompts, params[name]))
    return runs


def median_of(runs: list[dict], key) -> float:
    return statistics.median(key(r) for r in runs)


def spreads(data: dict, concurrency: int) -> str:
    """Every round's value, in run order: how far apart the rounds of one mode lie says what
    difference between modes this run can resolve."""
    runs = data["runs"]
    rows = [
        ("TPOT at c=1 (ms)", runs["c1"], lambda r: r["tpot_ms"]),
        (
            f"output tok/s at c={concurrency}",
            runs[f"c{concurrency}"],
            lambda r: r["output_tokens"] / r["seconds"],
        ),
        ("prefill tok/s", runs["prefill"], lambda r: r["prompt_tokens"] / r["seconds"]),
    ]
    lines = ["| rounds, in order | mode | values | max / min |", "|---|---|---|---|"]
    for label, by_mode, value in rows:
        for mode, mode_runs in by_mode.items():
            values = [value(r) for r in mode_runs]
            shown = ", ".join(f"{v:.1f}" for v in values)
            lines.append(f"| {label} | {mode} | {shown} | {max(values) / min(values):.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--prefill-prompts", type=int, default=4)
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--kv-cache-memory", type=int, default=512 * 1024**2)
    ap.add_argument("--name", default="logprobs")
    args = ap.parse_args()
    # oneDNN packs bf16 weights only on CPUs with AVX512 (BW/VL/DQ) or AVX-NE-CONVERT; elsewhere
    # bf16 runs through plain torch linears.
    plain_linears = "avx512bw" not in cpu_flags() and "avx_ne_convert" not in cpu_flags()
    if plain_linears:
        os.environ["LLMTOOL_CPU_KERNELS"] = "0"
    configure_threads()

    loaded = load_model(DEFAULT_MODEL, dtype="bf16", device="cpu")
    config = EngineConfig(kv_cache_memory=args.kv_cache_memory, max_num_seqs=max(64, args.concurrency))
    engines = {
        "bf16_logits": Engine(EngineConfig(**{**vars(config), "fp32_logits": False}), loaded=loaded),
        "fp32_logits": Engine(config, loaded=loaded),
    }
    assert engines["fp32_logits"].runner.head.is_fp32 and not engines["bf16_logits"].runner.head.is_fp32
    greedy = SamplingParams(max_tokens=args.output_len, temperature=0, ignore_eos=True)
    decode = {name: greedy for name in engines}
    one = make_prompts(loaded.tokenizer, 1, args.prompt_len, args.prompt_len, seed=1)
    many = make_prompts(loaded.tokenizer, args.concurrency, args.prompt_len, args.prompt_len, seed=2)
    interleaved(engines, one, decode, 1)  # warm-up: first-touch of caches and weights

    c1 = interleaved(engines, one, decode, args.rounds)
    print({k: [round(r["tpot_ms"], 2) for r in v] for k, v in c1.items()})
    cn = interleaved(engines, many, decode, args.rounds)
    print({k: [round(r["output_tokens"] / r["seconds"], 1) for r in v] for k, v in cn.items()})
    # Prefill: the fp32-logits engine twice, prompt logprobs on and off; the prefix cache must
    # not serve the repeated prompts, so each round's prompts are new to the cache.
    prefill: dict[str, list[dict]] = {"off": [], "on": []}
    engine = engines["fp32_logits"]
    for r in range(args.rounds):
        for mode in ("off", "on"):
            fresh = make_prompts(
                loaded.tokenizer,
                args.prefill_prompts,
                args.prefill_len,
                args.prefill_len,
                seed=100 + 2 * r + (mode == "on"),
            )
            params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=1 if mode == "on" else None)
            prefill[mode].append(timed_run(engine, fresh, params))
    print({k: [round(r["prompt_tokens"] / r["seconds"], 1) for r in v] for k, v in prefill.items()})

    tpot = {k: median_of(v, lambda r: r["tpot_ms"]) for k, v in c1.items()}
    tput = {k: median_of(v, lambda r: r["output_tokens"] / r["seconds"]) for k, v in cn.items()}
    tpot_cn = {k: median_of(v, lambda r: r["tpot_ms"]) for k, v in cn.items()}
    pre = {k: median_of(v, lambda r: r["prompt_tokens"] / r["seconds"]) for k, v in prefill.items()}
    data = {
        "machine": machine_info(),
        "config": {**vars(args), "dtype": "bf16", "plain_torch_linears": plain_linears},
        "c1_tpot_ms": tpot,
        "c1_tpot_ratio_fp32_over_bf16": tpot["fp32_logits"] / tpot["bf16_logits"],
        f"c{args.concurrency}_output_tok_s": tput,
        f"c{args.concurrency}_tpot_ms": tpot_cn,
        f"c{args.concurrency}_throughput_ratio_fp32_over_bf16": tput["fp32_logits"] / tput["bf16_logits"],
        "prefill_tok_s": pre,
        "prefill_ratio_on_over_off": pre["on"] / pre["off"],
        "runs": {"c1": c1, f"c{args.concurrency}": cn, "prefill": prefill},
    }
    m = data["machine"]
    linears = (
        "plain torch linears (this CPU has no AVX512: no oneDNN bf16 packing, no native GEMV)"
        if plain_linears
        else "packed oneDNN linears and the native GEMV"
    )
    md = f"""# Full-precision logits and prompt logprobs: what they cost

Default model ({DEFAULT_MODEL}) in bf16 on the engine, greedy, EOS ignored; {args.rounds} interleaved
rounds per comparison, medians. bf16 runs through {linears}.
Machine: {m["cpu"]}, {m["cores"]} cores, torch {m["torch"]}; {m["date"]}, commit {m["llmtool_commit"]}.
Reproduce: `.venv/bin/python -P bench/run.py logprobs_bench`.

| measure | bf16 logits (rounded) | fp32 logits | fp32 / bf16 |
|---|---|---|---|
| TPOT at c=1 (ms), {args.prompt_len}-token prompt, {args.output_len} tokens | {tpot["bf16_logits"]:.2f} | {tpot["fp32_logits"]:.2f} | {data["c1_tpot_ratio_fp32_over_bf16"]:.3f} |
| output tok/s at c={args.concurrency} | {tput["bf16_logits"]:.1f} | {tput["fp32_logits"]:.1f} | {data[f"c{args.concurrency}_throughput_ratio_fp32_over_bf16"]:.3f} |
| TPOT at c={args.concurrency} (ms) | {tpot_cn["bf16_logits"]:.1f} | {tpot_cn["fp32_logits"]:.1f} | {tpot_cn["fp32_logits"] / tpot_cn["bf16_logits"]:.3f} |

| prefill, {args.prefill_prompts} prompts of {args.prefill_len} tokens (fp32 logits) | prompt logprobs off | on (top-1) | on / off |
|---|---|---|---|
| prompt tok/s | {pre["off"]:.1f} | {pre["on"]:.1f} | {data["prefill_ratio_on_over_off"]:.3f} |

fp32 logits: the head's product accumulates in fp32 and is never rounded to bf16 (on CPU an fp32
copy of the head's weight and an fp32 GEMM; on CUDA torch.mm with out_dtype=float32). Prompt
logprobs: every prompt position's logits (vocabulary-wide log_softmax, rank, top-k), a slice of
256 rows at a time, from the same forward that fills the KV cache.

{spreads(data, args.concurrency)}
"""
    write_results(args.name, data, md)
    print(md)


if __name__ == "__main__":
    main()
