"""`llmtool quantize` of the default model through the real console script, with the settings
the quantization tests share: 4-bit, group 64, 16 calibration windows of 256 tokens, 4096
held-out Hamlet tokens for the report. GPTQ and AWQ reach the same quality margins over RTN
on 16 windows as on the default 128 (GPTQ's increase 0.30x RTN's, AWQ's 0.36x, measured)."""

import json
import os
import subprocess
import sys
from pathlib import Path

LLMTOOL = Path(sys.executable).parent / "llmtool"
SEQ_LEN = 256
EVAL_TOKENS = 4096
SHARED = ["--samples", "16", "--seq-len", str(SEQ_LEN), "--eval-tokens", str(EVAL_TOKENS), "--group-size", "64"]


def quantize_cli(folder: Path, name: str, *args: str, shared: bool = True) -> tuple[Path, dict]:
    """Run `llmtool quantize smollm2-135m -o folder/name ARGS [SHARED]`; (out dir, JSON report)."""
    out, report = folder / name, folder / f"{name}.json"
    run = subprocess.run(
        [str(LLMTOOL), "quantize", "smollm2-135m", "-o", str(out), *args, *(SHARED if shared else []),
         "--json", str(report)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "perplexity" in run.stdout and "Traceback" not in run.stderr
    return out, json.loads(report.read_text())


# ---- tiny checkpoints of every family (tests/test_quant_architectures.py) ----


def word_tokenizer(folder: Path, vocab: int) -> Path:
    """A word-level tokenizer over `vocab` ids, saved to folder: gptqmodel refuses a checkpoint
    without tokenizer files, and the tiny models have none (ids are all the tests use)."""
    import transformers
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0"))
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="t0", bos_token="t1", eos_token="t2", pad_token="t0"
    )
    fast.save_pretrained(str(folder))
    return folder


def gptqmodel_greedy(checkpoint: Path, prompt: list[int], new_tokens: int, dtype: str = "float16",
                     timeout: float = 600) -> list[int]:  # fmt: skip
    """Greedy tokens of a GPTQ checkpoint loaded by GPTQModel (transformers' model class with
    gptqmodel's quantized linears; torch kernel, CPU), in a subprocess as tests/gptqmodel_peer.py
    runs it (importing gptqmodel patches transformers)."""
    import tempfile

    import torch

    from tests.gptqmodel_peer import _env

    with tempfile.TemporaryDirectory(prefix="gptqmodel-greedy-") as tmp:
        request, result = Path(tmp, "request.pt"), Path(tmp, "result.pt")
        torch.save({"checkpoint": str(checkpoint), "prompt": prompt, "new_tokens": new_tokens, "dtype": dtype}, request)
        proc = subprocess.run(
            [sys.executable, "-P", str(Path(__file__).resolve()), str(request), str(result)],
            cwd=tmp, env=_env(), capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if proc.returncode != 0 or not result.exists():
            raise RuntimeError(f"gptqmodel greedy failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        return torch.load(result)["tokens"]


def _child_greedy(request: dict) -> dict:
    import torch
    from gptqmodel import GPTQModel

    model = GPTQModel.load(request["checkpoint"], device="cpu", backend="gptq_torch", dtype=getattr(torch, request["dtype"]))
    model.model.generation_config.eos_token_id = None
    ids = torch.tensor([request["prompt"]])
    with torch.inference_mode():
        out = model.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=request["new_tokens"],
                                   do_sample=False, eos_token_id=None, pad_token_id=0)  # fmt: skip
    return {"tokens": out[0, ids.shape[1] :].tolist()}


if __name__ == "__main__":
    import torch

    torch.save(_child_greedy(torch.load(sys.argv[1])), sys.argv[2])
