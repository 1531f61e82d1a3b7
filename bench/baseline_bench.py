"""This checkout's engine against a baseline commit's, side by side in one run
(make bench-baseline BASE=<commit>): the no-regression check for refactors.

The baseline is checked out with `git worktree` into a temporary folder and imported from
there (a `llmtool` package of symlinks first on PYTHONPATH); each tree runs
bench/engine_worker.py in a fresh process, alternating A B A B ... so drift on a noisy
machine hits both alike. Reports each run, the medians and their ratio, and whether the
first greedy tokens agree.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import machine_info, write_results

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "engine_worker.py"


def baseline_tree(rev: str, into: Path) -> Path:
    """A `llmtool` package of the baseline's cli/core/kernels, returned as a PYTHONPATH entry."""
    tree = into / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
    pkg = into / "pkg" / "llmtool"
    pkg.mkdir(parents=True)
    for name in ("cli", "core", "kernels"):
        (pkg / name).symlink_to(tree / name)
    return into / "pkg"


def run(env_path: str | None, args) -> dict:
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    if env_path:
        env["PYTHONPATH"] = env_path
    cmd = [sys.executable, str(WORKER), "--requests", str(args.requests), "--output-len", str(args.output_len)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _runs(results: list[dict]) -> str:
    return ", ".join("%.1f" % r["output_tok_s"] for r in results)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the baseline commit")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--output-len", type=int, default=64)
    args = ap.parse_args()
    base = subprocess.check_output(["git", "-C", str(ROOT), "rev-parse", "--short", args.base], text=True).strip()
    with tempfile.TemporaryDirectory(prefix="llmtool-baseline-") as tmp:
        path = str(baseline_tree(args.base, Path(tmp)))
        try:
            runs = {"baseline": [], "current": []}
            for _ in range(args.rounds):
                runs["baseline"].append(run(path, args))
                runs["current"].append(run(None, args))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(Path(tmp) / "tree")])
    med = {k: statistics.median(r["output_tok_s"] for r in v) for k, v in runs.items()}
    ratio = med["current"] / med["baseline"]
    same = all(a["first_tokens"] == b["first_tokens"] for a, b in zip(runs["baseline"], runs["current"]))
    info = machine_info()
    data = {"machine": info, "baseline": base, "runs": runs, "median_output_tok_s": med, "ratio": ratio,
            "same_tokens": same, "workload": vars(args)}  # fmt: skip
    md = (
        f"# Engine: this commit vs baseline {base} (default model, {runs['current'][0]['dtype']}, CPU)\n\n"
        f"{args.requests} requests, prompts 64..256 tokens of Macbeth, {args.output_len} output tokens each, all at "
        f"once; each tree in its own process, alternating, {args.rounds} rounds. Machine: {info['cpu']}, "
        f"{info['cores']} cores; torch {info['torch']}; {info['date']}, commit {info['llmtool_commit']}. "
        f"Reproduce: `make bench-baseline BASE={base}`.\n\n"
        "| tree | output tok/s (median) | runs |\n|---|---|---|\n"
        + "".join(
            f"| {k} | {med[k]:.1f} | {_runs(v)} |\n" for k, v in runs.items()
        )
        + f"\nRatio current / baseline: **{ratio:.3f}**; first greedy tokens identical: {same}.\n"
    )
    write_results("baseline", data, md)
    print(md)


if __name__ == "__main__":
    main()
