"""One engine throughput measurement, printed as JSON: what baseline_bench.py runs once per
tree (this checkout's, or a baseline commit's put first on PYTHONPATH). Uses only APIs every
recent commit has, so the same file measures both."""

import argparse
import json
import random
import time

from llmtool.core.engine.config import EngineConfig
from llmtool.core.engine.engine import Engine
from llmtool.core.engine.sampling_params import SamplingParams
from llmtool.core.models.aliases import DEFAULT_MODEL
from llmtool.core.models.loader import load_model
from llmtool.core.texts import play_text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    loaded = load_model(DEFAULT_MODEL, dtype=args.dtype)
    ids = loaded.tokenizer.encode(play_text("macbeth"))
    rng = random.Random(0)
    prompts = []
    for _ in range(args.requests):
        n = rng.randint(64, 256)
        start = rng.randrange(0, len(ids) - n)
        prompts.append(ids[start : start + n])
    params = SamplingParams(max_tokens=args.output_len, temperature=0, ignore_eos=True)
    engine = Engine(EngineConfig(kv_cache_memory=256 * 1024**2), loaded=loaded)
    engine.generate(prompts[:2], SamplingParams(max_tokens=4, temperature=0, ignore_eos=True))  # warm-up
    start = time.perf_counter()
    out = engine.generate(prompts, params)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for c in out)
    import llmtool.core

    print(json.dumps({"output_tok_s": tokens / seconds, "seconds": seconds, "dtype": str(loaded.dtype),
                      "tree": llmtool.core.__path__[0], "first_tokens": out[0].token_ids[:8]}))  # fmt: skip


if __name__ == "__main__":
    main()
