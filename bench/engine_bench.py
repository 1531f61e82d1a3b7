"""Engine throughput vs transformers, side by side in one run (make bench-engine).

Workload: N requests (default 64), prompts of 64..512 tokens cut from a Shakespeare play,
128 output tokens each with EOS ignored, default model in bf16, all requests submitted
at once. Peers: (a) transformers generate, one request at a time (a subset, then its
rate); (b) transformers static padded batches of 16. Reports output tok/s, ratios, our
TTFT/TPOT percentiles and the KV cache waste at peak (allocated minus used token slots).
"""

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from bench.common import machine_info, percentiles, write_results
from llmtool.core.engine.config import EngineConfig
from llmtool.core.engine.engine import Engine
from llmtool.core.engine.sampling_params import SamplingParams
from llmtool.core.models.aliases import DEFAULT_MODEL
from llmtool.core.models.export import export_hf
from llmtool.core.models.loader import load_model
from llmtool.core.runtime import configure_threads
from llmtool.core.texts import play_text


def make_prompts(tokenizer, n: int, lo: int, hi: int, seed: int) -> list[list[int]]:
    ids = tokenizer.encode(play_text("macbeth"))
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        length = rng.randint(lo, hi)
        start = rng.randrange(0, len(ids) - length)
        prompts.append(ids[start : start + length])
    return prompts


def run_engine(loaded, prompts, output_len: int, args) -> dict:
    config = EngineConfig(
        kv_cache_memory=args.kv_cache_memory,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )
    engine = Engine(config, loaded=loaded)
    params = SamplingParams(max_tokens=output_len, temperature=0, ignore_eos=True)
    bm, block_size = engine.block_manager, engine.block_manager.block_size
    peak = {"blocks": 0, "waste": 0.0}

    def on_step(done, total):
        used = bm.num_used_blocks
        if used >= peak["blocks"]:
            tokens = sum(s.num_tokens for s in engine.scheduler.running)
            peak["blocks"], peak["waste"] = used, 1 - tokens / max(used * block_size, 1)

    start = time.perf_counter()
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", p, params)
    arrival = engine.clock()
    done = 0
    while engine.has_unfinished():
        done += sum(o.finished for o in engine.step())
        on_step(done, len(prompts))
    elapsed = time.perf_counter() - start
    completions = [engine.pop_finished(f"r{i}") for i in range(len(prompts))]
    ttft = [c.token_times[0] - arrival for c in completions]
    tpot = [(c.token_times[-1] - c.token_times[0]) / (len(c.token_times) - 1) for c in completions]
    out_tokens = sum(len(c.token_ids) for c in completions)
    return {
        "seconds": elapsed,
        "output_tokens": out_tokens,
        "output_tok_s": out_tokens / elapsed,
        "ttft_s": percentiles(ttft),
        "tpot_ms": {k: v * 1000 for k, v in percentiles(tpot).items()},
        "kv_blocks_peak": peak["blocks"],
        "kv_waste_at_peak": peak["waste"],
        "num_preemptions": engine.stats().num_preemptions,
        "token_ids": [c.token_ids for c in completions],
    }


def hf_generate(model, batch: list[list[int]], output_len: int, pad_id: int) -> list[list[int]]:
    """Static batch: left-padded, greedy, exactly output_len tokens (EOS disabled)."""
    width = max(len(p) for p in batch)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    model.generation_config.eos_token_id = None
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=output_len,
            do_sample=False,
            pad_token_id=pad_id,
        )
    return out[:, width:].tolist()


def run_hf(model, prompts, output_len: int, batch_size: int, pad_id: int) -> dict:
    start = time.perf_counter()
    outputs = []
    for i in range(0, len(prompts), batch_size):
        outputs += hf_generate(model, prompts[i : i + batch_size], output_len, pad_id)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o) for o in outputs)
    return {
        "requests": len(prompts),
        "seconds": elapsed,
        "output_tokens": tokens,
        "output_tok_s": tokens / elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--input-min", type=int, default=64)
    ap.add_argument("--input-max", type=int, default=512)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--one-at-a-time", type=int, default=8, help="requests run alone through transformers")
    ap.add_argument("--hf-batch", type=int, default=16)
    ap.add_argument("--kv-cache-memory", type=int, default=2 * 1024**3)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="engine")
    args = ap.parse_args()
    configure_threads()

    from transformers import AutoModelForCausalLM

    loaded = load_model(DEFAULT_MODEL, dtype="bf16", device="cpu")
    prompts = make_prompts(loaded.tokenizer, args.num_requests, args.input_min, args.input_max, args.seed)
    # The peer runs what its users run: a dense bf16 safetensors checkpoint (transformers keeps
    # GGUF weights packed and dequantizes per matmul, which would slow the peer unfairly).
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(DEFAULT_MODEL, Path(tmp) / "hf", dtype="bf16")
        hf = AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf", dtype=torch.bfloat16).eval()
    pad = loaded.tokenizer.pad_token_id or 0

    ours = run_engine(loaded, prompts, args.output_len, args)
    print(f"engine: {ours['output_tok_s']:.1f} tok/s in {ours['seconds']:.1f} s")
    alone = run_hf(hf, prompts[: args.one_at_a_time], args.output_len, 1, pad)
    print(f"transformers one at a time: {alone['output_tok_s']:.1f} tok/s")
    batched = run_hf(hf, prompts, args.output_len, args.hf_batch, pad)
    print(f"transformers batch {args.hf_batch}: {batched['output_tok_s']:.1f} tok/s")
    ours.pop("token_ids")

    ratio_a = ours["output_tok_s"] / alone["output_tok_s"]
    ratio_b = ours["output_tok_s"] / batched["output_tok_s"]
    data = {
        "machine": machine_info(),
        "config": vars(args),
        "workload": {"prompt_tokens": [len(p) for p in prompts], "output_len": args.output_len},
        "engine": ours,
        "transformers_one_at_a_time": alone,
        f"transformers_batch_{args.hf_batch}": batched,
        "ratio_vs_one_at_a_time": ratio_a,
        f"ratio_vs_batch_{args.hf_batch}": ratio_b,
    }
    m = data["machine"]
    md = f"""# Engine vs transformers (default model, bf16, CPU)

{args.num_requests} requests, prompts {args.input_min}..{args.input_max} tokens, {args.output_len} output tokens each
(EOS ignored), all submitted at once; transformers runs a dense bf16 safetensors export of the same
weights (`llmtool models export --dtype bf16`). Machine: {m["cpu"]}, {m["cores"]} cores; torch {m["torch"]},
transformers {m["transformers"]}; {m["date"]}, commit {m["llmtool_commit"]}. Reproduce: `make bench-engine`.

| system | output tok/s | ratio (ours / system) |
|---|---|---|
| llmtool engine (paged KV, continuous batching) | {ours["output_tok_s"]:.1f} | 1.00 |
| transformers, one request at a time ({alone["requests"]} requests) | {alone["output_tok_s"]:.1f} | {ratio_a:.2f}x |
| transformers, static padded batches of {args.hf_batch} | {batched["output_tok_s"]:.1f} | {ratio_b:.2f}x |

Engine latency (all requests arrive at t=0): TTFT p50 {ours["ttft_s"]["p50"]:.2f} s, p90 {ours["ttft_s"]["p90"]:.2f} s,
p99 {ours["ttft_s"]["p99"]:.2f} s; TPOT p50 {ours["tpot_ms"]["p50"]:.1f} ms, p90 {ours["tpot_ms"]["p90"]:.1f} ms,
p99 {ours["tpot_ms"]["p99"]:.1f} ms. KV cache at peak: {ours["kv_blocks_peak"]} blocks,
{100 * ours["kv_waste_at_peak"]:.2f}% of allocated token slots unused; preemptions: {ours["num_preemptions"]}.
"""
    write_results(args.name, data, md)
    print(md)


if __name__ == "__main__":
    main()
