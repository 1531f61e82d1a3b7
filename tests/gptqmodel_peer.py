"""GPTQModel (PyPI `gptqmodel==7.6.*`) as a GPTQ peer for tests and benchmarks: quantize a
Hugging Face model directory, and compute logits from a GPTQ v1 checkpoint, on CPU.

Each call runs this file in a subprocess: importing gptqmodel patches
transformers and safetensors, starts worker threads and changes env vars, none of which may
leak into the test process. Arguments and results travel through torch.save files.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Offline always. gptqmodel defaults to (cores + 1) // 2 CPU workers, 1 here, and then every
    # load fails ("Virtual pool 'model_loader:cpu' requests 2 workers but parent 'cpu' only has 1").
    # No GPU: hide any so the CPU paths are the ones tested.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    env.setdefault("GPTQMODEL_CPU_WORKERS", "2")
    env.setdefault("GPTQMODEL_DISABLE_GIL_WARNING", "1")
    return env


def _run(command: str, request: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="gptqmodel-peer-") as tmp:
        request_path, result_path = Path(tmp, "request.pt"), Path(tmp, "result.pt")
        torch.save(request, request_path)
        proc = subprocess.run(
            # Run as a file, not `-m tests.gptqmodel_peer`: the repo root must never come first on
            # sys.path (our kernels/ would shadow the package transformers imports).
            [sys.executable, "-P", str(Path(__file__).resolve()), command, str(request_path), str(result_path)],
            cwd=tmp,  # gptqmodel writes a logs/ folder into its working directory
            env=_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0 or not result_path.exists():
            # gptqmodel logs a lot; the tail holds the traceback.
            raise RuntimeError(
                f"gptqmodel {command} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                f"{proc.stderr[-8000:]}"
            )
        return torch.load(result_path)


def gptqmodel_version() -> str:
    from importlib.metadata import version

    return version("gptqmodel")


def gptqmodel_logits(
    checkpoint_dir: Path,
    input_ids: list[list[int]],
    backend: str = "gptq_torch",
    dtype: str = "bfloat16",
    tokenizer_dir: Path | None = None,
    timeout: float = 900,
) -> torch.Tensor:
    """Logits [batch, seq, vocab] as fp32 for equal-length rows of token ids.

    backend "gptq_torch" is gptqmodel's reference pure-torch kernel (dequantize, then matmul);
    "auto" picks its fast CPU kernel (TorchAtenLinear, torch's int4pack mm). Both compute in
    fp16 or bf16 only: gptqmodel refuses float32 for quantized linears. "auto" also needs every
    in_features divisible by group_size (group 128 fails on this model's 576), "gptq_torch" does not.

    gptqmodel will not load a checkpoint without tokenizer files; for one that has none, pass
    `tokenizer_dir` and the call sees a temporary directory of links to both."""
    with tempfile.TemporaryDirectory(prefix="gptqmodel-ckpt-") as view:
        if tokenizer_dir is not None and not Path(checkpoint_dir, "tokenizer_config.json").exists():
            for source in [*Path(tokenizer_dir).glob("tokenizer*"), *Path(checkpoint_dir).iterdir()]:
                Path(view, source.name).unlink(missing_ok=True)
                Path(view, source.name).symlink_to(source.resolve())
            checkpoint_dir = Path(view)
        request = {"checkpoint_dir": str(checkpoint_dir), "input_ids": input_ids, "backend": backend}
        return _run("logits", {**request, "dtype": dtype}, timeout)["logits"]


def gptqmodel_quantize(
    model_dir: Path,
    out_dir: Path,
    calibration: list[list[int]],
    bits: int = 4,
    group_size: int = 64,
    sym: bool = True,
    desc_act: bool = False,
    damp: float = 0.01,
    dtype: str | None = None,
    timeout: float = 3600,
    **config,
) -> float:
    """Quantize `model_dir` with exactly these calibration token rows and save a GPTQ v1 checkpoint
    in `out_dir`; returns the seconds `model.quantize` took (the total with import, load and save
    goes to stderr and out_dir/gptqmodel_peer.json).

    dtype None keeps gptqmodel's choice, bfloat16 on CPU (also the dtype of the saved embeddings
    and norms). `config` goes to QuantizeConfig as is: gptqmodel's defaults differ from the GPTQ
    paper in act_group_aware=True (group-aware reordering; g_idx stays i // group_size)."""
    request = {
        "model_dir": str(model_dir),
        "out_dir": str(out_dir),
        "calibration": calibration,
        "dtype": dtype,
        "config": dict(
            bits=bits, group_size=group_size, sym=sym, desc_act=desc_act, damp_percent=damp, **config
        ),
    }
    result = _run("quantize", request, timeout)
    print(
        f"gptqmodel quantize: {result['quantize_s']:.1f} s, total {result['total_s']:.1f} s", file=sys.stderr
    )
    return result["quantize_s"]


# ---- what runs in the subprocess ----


def _child_logits(request: dict) -> dict:
    from gptqmodel import GPTQModel

    model = GPTQModel.load(
        request["checkpoint_dir"],
        device="cpu",
        backend=request["backend"],
        dtype=getattr(torch, request["dtype"]),
    )
    with torch.inference_mode():
        ids = torch.tensor(request["input_ids"], dtype=torch.long)
        logits = model.model(input_ids=ids).logits
    return {"logits": logits.float()}


def _child_quantize(request: dict) -> dict:
    start = time.perf_counter()
    from gptqmodel import GPTQModel, QuantizeConfig

    # format "gptq" is v1 (zeros stored minus one); device set here, as load() then refuses one.
    config = QuantizeConfig(format="gptq", device="cpu", **request["config"])
    load_kwargs = {"dtype": getattr(torch, request["dtype"])} if request["dtype"] else {}
    model = GPTQModel.load(request["model_dir"], quantize_config=config, **load_kwargs)
    # Token ids, not text, so gptqmodel cannot tokenize differently; rows up to 10 tokens
    # long are dropped by it (calibration_data_min_length), and longer ones are kept whole.
    rows = [{"input_ids": row, "attention_mask": [1] * len(row)} for row in request["calibration"]]
    t0 = time.perf_counter()
    model.quantize(rows, batch_size=1)
    quantize_s = time.perf_counter() - t0
    model.save(request["out_dir"])
    result = {"quantize_s": quantize_s, "total_s": time.perf_counter() - start}
    Path(request["out_dir"], "gptqmodel_peer.json").write_text(json.dumps(result))
    return result


def main() -> None:
    command, request_path, result_path = sys.argv[1:4]
    handler = {"logits": _child_logits, "quantize": _child_quantize}[command]
    torch.save(handler(torch.load(request_path)), result_path)


if __name__ == "__main__":
    main()
