"""GPU kernel check and timing (run by make bench-kernels when CUDA is present; alone:
`python -P bench/run.py kernels_gpu`). Writes bench/results/kernels_gpu.{json,md}.

For each Triton kernel at real sizes (the default model's and a Llama-3-8B-sized layer):
correctness against the torch reference on fresh random inputs, then time with CUDA events
(median of 50 after warm-up) against the memory floor: bytes the kernel must move / the
copy bandwidth measured here (a device-to-device copy of 1 GiB). The issue's targets: decode
attention and the int4 GEMV at >= 70% of that bandwidth for batch 1..16.
"""

import statistics
import sys

import torch

from bench.common import machine_info, write_results


def cuda_time(fn, reps: int = 50) -> float:
    """Median seconds per call, CUDA events."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1000)
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes/s of a device-to-device copy (read + write counted)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / cuda_time(lambda: dst.copy_(src), reps=20)


def check(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> dict:
    err = (got.float() - want.float()).abs()
    ok = bool((err <= atol + rtol * want.float().abs()).all())
    return {"kernel": name, "max_abs_err": float(err.max()), "ok": ok}


def main() -> None:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to run (the CPU benchmarks are bench/kernels_bench.py)")
        return
    from llmtool.core.quant.formats import pack_gptq
    from llmtool.kernels.paged_attention import paged_attention_ref
    from llmtool.kernels.quant_linear import quant_linear_ref
    from llmtool.kernels.triton_norm import add_rms_norm_triton
    from llmtool.kernels.triton_paged_attention import paged_attention_triton
    from llmtool.kernels.triton_quant_matmul import GPTQ, quant_matmul_triton

    dev, bf = "cuda", torch.bfloat16
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s")
    rows, checks = [], []
    g = torch.Generator(device=dev).manual_seed(0)

    # Decode attention: Hq 32, Hk 8, D 128 (Llama-3-8B), block 16, context 1024 / 4096.
    for batch in (1, 4, 16):
        for ctx in (1024, 4096):
            hq, hk, d, bs = 32, 8, 128, 16
            nb = ctx // bs
            k_cache = torch.randn(batch * nb, bs, hk, d, device=dev, dtype=bf, generator=g)
            v_cache = torch.randn_like(k_cache)
            tables = torch.randperm(batch * nb, device=dev).view(batch, nb).int()
            q = torch.randn(batch, hq, d, device=dev, dtype=bf, generator=g)
            cu = torch.arange(batch + 1, device=dev, dtype=torch.int32)
            lens = torch.full((batch,), ctx, device=dev, dtype=torch.int32)

            def run(q=q, k_cache=k_cache, v_cache=v_cache, tables=tables, cu=cu, lens=lens, d=d):
                return paged_attention_triton(q, k_cache, v_cache, tables, cu, lens, 1, d**-0.5)

            if ctx == 1024:
                want = paged_attention_ref(q, k_cache, v_cache, tables, cu.tolist(), lens.tolist(), d**-0.5)
                checks.append(check(f"paged_attention B={batch} ctx={ctx}", run(), want, 2e-2, 2e-2))
            t = cuda_time(run)
            nbytes = 2 * batch * ctx * hk * d * 2
            rows.append({"kernel": "paged_attention decode", "shape": f"B={batch} ctx={ctx} Hq32/Hk8/D128",
                         "us": t * 1e6, "GB_s": nbytes / t / 1e9, "frac_of_copy_bw": nbytes / t / bw})  # fmt: skip

    # int4 GPTQ GEMV/GEMM: a Llama-3-8B MLP up projection, group 128, batch 1..16.
    out_f, in_f, group = 14336, 4096, 128
    q = torch.randint(0, 16, (out_f, in_f), device=dev, generator=g)
    zeros = torch.full((in_f // group, out_f), 8, device=dev)
    scales = (torch.rand(in_f // group, out_f, device=dev, generator=g) * 0.01).half()
    g_idx = torch.arange(in_f, device=dev) // group
    t4 = pack_gptq(q, zeros, scales, g_idx, 4)
    for m in (1, 4, 16):
        x = torch.randn(m, in_f, device=dev, dtype=bf, generator=g)

        def run(x=x):
            return quant_matmul_triton(x, t4["qweight"], t4["qzeros"], t4["scales"].to(bf), t4["g_idx"], GPTQ, 4)

        if m == 4:
            checks.append(check("int4 gptq 4x4096->14336", run(), quant_linear_ref(x, q, zeros, scales, g_idx), 2e-2, 5e-2))
        t = cuda_time(run)
        nbytes = out_f * in_f // 2 + scales.numel() * 2 + m * in_f * 2 + m * out_f * 2
        rows.append({"kernel": "int4 GPTQ matmul", "shape": f"{m}x{in_f} -> {out_f}, g{group}",
                     "us": t * 1e6, "GB_s": nbytes / t / 1e9, "frac_of_copy_bw": nbytes / t / bw})  # fmt: skip

    x = torch.randn(16, 4096, device=dev, dtype=bf, generator=g)
    r, w = torch.randn_like(x), torch.ones(4096, device=dev, dtype=bf)
    t = cuda_time(lambda: add_rms_norm_triton(x, r, w, 1e-5))
    rows.append({"kernel": "add_rms_norm", "shape": "16x4096", "us": t * 1e6, "GB_s": 4 * x.numel() * 2 / t / 1e9,
                 "frac_of_copy_bw": 4 * x.numel() * 2 / t / bw})  # fmt: skip

    data = {"machine": machine_info(), "device": torch.cuda.get_device_name(), "copy_bandwidth_GB_s": bw / 1e9,
            "checks": checks, "timings": rows}  # fmt: skip
    md = [f"# Triton kernels on {data['device']}", "", f"Copy bandwidth {bw / 1e9:.0f} GB/s (device-to-device, read + write).",
          "Target: decode attention and int4 GEMV >= 70% of it at batch 1..16.", "",
          "| kernel | shape | us | GB/s | of copy bw |", "|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        md.append(f"| {row['kernel']} | {row['shape']} | {row['us']:.1f} | {row['GB_s']:.0f} | {row['frac_of_copy_bw']:.0%} |")
    md += ["", "| correctness check | max abs err | ok |", "|---|---|---|"]
    md += [f"| {c['kernel']} | {c['max_abs_err']:.3g} | {c['ok']} |" for c in checks]
    write_results("kernels_gpu", data, "\n".join(md) + "\n")
    print("\n".join(md))
    if not all(c["ok"] for c in checks):
        sys.exit(1)


if __name__ == "__main__":
    main()
