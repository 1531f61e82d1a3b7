"""Speculative decoding (prompt lookup) on vs off, side by side in one run (make bench-spec).

Default model, bf16, CPU, greedy, single stream: one request at a time, so TPOT is the
decode speed a user sees. Two workloads of chat prompts:
  grounded  - "repeat / copy this passage or code": the output copies the input, where
              prompt lookup should find most tokens;
  open      - open questions with no passage to copy: lookup finds little, and the
              adaptive fall-back should make speculation cost (almost) nothing.
Each prompt runs with speculation off and on, alternating which goes first, in the same
process and on the same loaded weights (two engines, one KV cache each), `--repeats` times:
the CPU is shared, so only interleaved medians and their ratios mean anything.
Reports per workload: median TPOT off/on and the ratio, acceptance rate, mean accepted
length (tokens per verifying step), tokens per streamed chunk, and whether the greedy
tokens were identical.
"""

import argparse
import statistics
import time

from bench.common import machine_info, write_results
from llmtool.core.engine.config import EngineConfig, SpeculativeConfig
from llmtool.core.engine.engine import Engine
from llmtool.core.engine.sampling_params import SamplingParams
from llmtool.core.models.aliases import DEFAULT_MODEL
from llmtool.core.models.loader import load_model
from llmtool.core.runtime import configure_threads, dtype_name
from llmtool.core.texts import plain_text, play_text

CODE = '''def moving_average(values, window):
    """Mean of each run of `window` consecutive values."""
    if window <= 0:
        raise ValueError("window must be positive")
    total = sum(values[:window])
    averages = [total / window]
    for i in range(window, len(values)):
        total += values[i] - values[i - window]
        averages.append(total / window)
    return averages


class Counter:
    def __init__(self):
        self.counts = {}

    def add(self, key):
        self.counts[key] = self.counts.get(key, 0) + 1
'''

OPEN = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator works to a ten-year-old.",
    "What are three good habits for staying healthy while working from home?",
    "Describe a day in the life of a medieval blacksmith.",
    "Give me some tips for learning to play the guitar as an adult.",
    "Why do leaves change colour in autumn?",
]


def grounded_prompts(n: int) -> list[str]:
    text = plain_text(play_text("macbeth"))
    prompts = [f"Repeat the following code exactly, without changes:\n\n{CODE}"]
    for i in range(n - 1):
        start = text.index("\n\n", 15000 + 9000 * i) + 2
        passage = text[start : start + 700]
        prompts.append(f"Repeat the following text exactly, word for word:\n\n{passage}")
    return prompts


def chat_ids(tokenizer, prompt: str) -> list[int]:
    messages = [{"role": "user", "content": prompt}]
    return tokenizer.encode(
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )


def run_one(engine: Engine, ids: list[int], params: SamplingParams) -> dict:
    """One request alone; TPOT from the engine's token times, chunks = steps that emitted."""
    engine.add_request("r", ids, params)
    chunks = 0
    while engine.has_unfinished():
        chunks += sum(bool(o.new_token_ids) for o in engine.step())
    c = engine.pop_finished("r")
    n = len(c.token_ids)
    tpot = (c.token_times[-1] - c.token_times[0]) / (n - 1) if n > 1 else float("nan")
    return {"tpot_s": tpot, "tokens": c.token_ids, "chunks": chunks}


def run_workload(name, prompts, off: Engine, on: Engine, params, repeats: int) -> dict:
    before = on.stats()
    tpot = {"off": [], "on": []}
    tokens = {"off": [], "on": []}
    chunk_sizes = []
    ratios = []  # off / on of the same prompt run back to back: robust to the machine's load drifting
    for rep in range(repeats):
        for i, ids in enumerate(prompts):
            order = [("off", off), ("on", on)] if (rep + i) % 2 == 0 else [("on", on), ("off", off)]
            for mode, engine in order:
                r = run_one(engine, ids, params)
                tpot[mode].append(r["tpot_s"])
                if rep == 0:
                    tokens[mode].append(r["tokens"])
                if mode == "on":
                    chunk_sizes.append(len(r["tokens"]) / r["chunks"])
            ratios.append(tpot["off"][-1] / tpot["on"][-1])
        print(
            f"  {name} repeat {rep + 1}/{repeats}: median TPOT off {1e3 * statistics.median(tpot['off']):.1f} ms, "
            f"on {1e3 * statistics.median(tpot['on']):.1f} ms"
        )
    after = on.stats()
    drafted = after.spec_num_draft_tokens - before.spec_num_draft_tokens
    accepted = after.spec_num_accepted_tokens - before.spec_num_accepted_tokens
    steps = after.spec_num_verify_steps - before.spec_num_verify_steps
    emitted = after.spec_num_emitted_tokens - before.spec_num_emitted_tokens
    off_ms, on_ms = (1e3 * statistics.median(tpot[m]) for m in ("off", "on"))
    same = sum(a == b for a, b in zip(tokens["off"], tokens["on"], strict=True))
    return {
        "num_prompts": len(prompts),
        "prompt_tokens": [len(p) for p in prompts],
        "repeats": repeats,
        "tpot_ms_off": off_ms,
        "tpot_ms_on": on_ms,
        "speedup": off_ms / on_ms,
        "paired_speedup_median": statistics.median(ratios),
        "paired_speedups": ratios,
        "tpot_ms_off_all": [1e3 * t for t in tpot["off"]],
        "tpot_ms_on_all": [1e3 * t for t in tpot["on"]],
        "draft_tokens": drafted,
        "accepted_tokens": accepted,
        "acceptance_rate": accepted / drafted if drafted else 0.0,
        "verify_steps": steps,
        "mean_accepted_length": emitted / steps if steps else 0.0,
        "tokens_per_chunk": statistics.mean(chunk_sizes),
        "identical_outputs": f"{same}/{len(prompts)}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-prompts", type=int, default=6, help="per workload")
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k", type=int, default=8, help="--num-speculative-tokens")
    ap.add_argument("--kv-cache-memory", type=int, default=512 * 1024**2)
    ap.add_argument("--name", default="spec")
    args = ap.parse_args()
    configure_threads()

    loaded = load_model(DEFAULT_MODEL, dtype="bf16", device="cpu")
    tok = loaded.tokenizer
    off = Engine(EngineConfig(kv_cache_memory=args.kv_cache_memory), loaded=loaded)
    spec = SpeculativeConfig("ngram", num_speculative_tokens=args.k)
    on = Engine(EngineConfig(kv_cache_memory=args.kv_cache_memory, speculative=spec), loaded=loaded)
    workloads = {
        "grounded": [chat_ids(tok, p) for p in grounded_prompts(args.num_prompts)],
        "open": [chat_ids(tok, p) for p in (OPEN * 2)[: args.num_prompts]],
    }
    # Greedy; EOS ignored so every request yields output_len tokens (the grounded passages
    # are longer than that, so their outputs are still copies).
    params = SamplingParams(max_tokens=args.output_len, temperature=0, ignore_eos=True)
    for engine in (off, on):  # warm-up: lazy set-up and first-call costs stay out of the figures
        run_one(engine, workloads["open"][0], SamplingParams(max_tokens=8, temperature=0))
    start = time.perf_counter()
    results = {}
    for name, prompts in workloads.items():
        results[name] = run_workload(name, prompts, off, on, params, args.repeats)
    elapsed = time.perf_counter() - start

    data = {
        "machine": machine_info(),
        "config": {
            **vars(args),
            "model": DEFAULT_MODEL,
            "dtype": dtype_name(loaded.dtype),
            "speculative": vars(spec),
        },
        "seconds": elapsed,
        "workloads": results,
    }
    m = data["machine"]
    rows = "\n".join(
        f"| {name} | {r['tpot_ms_off']:.1f} | {r['tpot_ms_on']:.1f} | {r['speedup']:.2f}x | "
        f"{r['paired_speedup_median']:.2f}x | "
        f"{100 * r['acceptance_rate']:.0f}% | {r['mean_accepted_length']:.2f} | {r['tokens_per_chunk']:.2f} | "
        f"{r['identical_outputs']} |"
        for name, r in results.items()
    )
    md = f"""# Speculative decoding (prompt lookup): on vs off

Default model ({DEFAULT_MODEL}), {dtype_name(loaded.dtype)}, CPU, greedy, single stream; {args.num_prompts} chat
prompts per workload x {args.repeats} repeats, {args.output_len} output tokens each (EOS ignored); `--speculative ngram
--num-speculative-tokens {args.k}` (n-gram {spec.ngram_min}..{spec.ngram_max}, adaptive). Off and on alternate per
request in one process on the same weights; figures are medians over all requests. Machine: {m["cpu"]},
{m["cores"]} cores (shared with other work while this ran); torch {m["torch"]}; {m["date"]}, commit
{m["llmtool_commit"]}. Reproduce: `make bench-spec`.

| workload | TPOT off (ms) | TPOT on (ms) | speed-up (medians) | speed-up (median of paired runs) | acceptance | mean accepted length | tokens per chunk | same greedy tokens |
|---|---|---|---|---|---|---|---|---|
{rows}

grounded: "repeat this text / code exactly" (one code snippet, passages of Macbeth); open: questions with
nothing to copy. Mean accepted length counts tokens per verifying step (accepted drafts + the target's
own token); tokens per chunk counts tokens per streamed delta over all steps of a request. Paired
speed-up: the median over (prompt, repeat) of off TPOT / on TPOT for the two runs made back to back.
Same greedy tokens: bf16 outputs with speculation on vs off (first repeat); a verify step is a
k+1-row matmul where a decode is a 1-row one, and bf16 rounding differs between the two kernels, so
near-ties can flip (in fp32 the tokens are identical: tests/test_speculative*.py).
"""
    write_results(args.name, data, md)
    print(md)


if __name__ == "__main__":
    main()
