"""Runs one benchmark module: `python -P bench/run.py engine_bench [ARGS]` (what `make bench-*` does).

The benchmarks import each other as `bench.*`, so the repo root must be importable, but never
ahead of site-packages: our top-level `kernels/` would shadow the hub package `kernels` that
transformers imports. `python -m bench.x` puts the root first; this appends it last instead.
"""

import runpy
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])

if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: bench/run.py MODULE [ARGS]   (e.g. engine_bench)")
    sys.path[:] = [p for p in sys.path if p not in ("", ".", ROOT, str(Path(__file__).parent))] + [ROOT]
    module = sys.argv.pop(1)
    sys.argv[0] = f"bench/{module}.py"
    runpy.run_module(f"bench.{module}", run_name="__main__", alter_sys=True)
