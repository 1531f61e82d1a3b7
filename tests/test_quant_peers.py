"""Interop with GPTQModel (the maintained successor of AutoGPTQ): it loads the GPTQ checkpoint
`llmtool quantize` writes, and its logits on held-out text match our engine's.

Tolerance: both sides compute in bf16 with different kernels (GPTQModel's torch
dequantize-then-matmul; our int4 kernel or dequantize path), so logits agree to bf16 noise,
not bit for bit. Stated bounds, on 2 x 128 held-out Hamlet tokens: the log-probabilities of
the actual next tokens differ by at most 0.05 nats on average, and the top token agrees at
>= 95% of positions."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.gptqmodel_peer import gptqmodel_logits

pytestmark = [pytest.mark.slow, pytest.mark.real_model, pytest.mark.peer]

LLMTOOL = Path(sys.executable).parent / "llmtool"


def our_logits(path: Path, rows: list[list[int]]) -> torch.Tensor:
    from llmtool.core.models.context import PrefillContext
    from llmtool.core.models.loader import load_model

    model = load_model(str(path), with_tokenizer=False).model.prepare_for_inference()
    out = []
    with torch.inference_mode():
        for row in rows:
            ids = torch.tensor(row)
            hidden = model(ids, torch.arange(len(row)), PrefillContext([len(row)], model.spec))
            out.append(model.compute_logits(hidden))
    return torch.stack(out)


def test_gptqmodel_loads_our_checkpoint_and_agrees(tmp_path):
    from llmtool.core.quant.calibration import evaluation_windows

    out = tmp_path / "gptq"
    command = [str(LLMTOOL), "quantize", "smollm2-135m", "-o", str(out), "--method", "gptq", "--group-size", "64"]
    command += ["--samples", "16", "--seq-len", "256", "--eval-tokens", "0"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr

    from transformers import AutoTokenizer

    rows = evaluation_windows(AutoTokenizer.from_pretrained(out), 4096, 128)[-2:]  # late in Hamlet
    theirs = gptqmodel_logits(out, rows)
    ours = our_logits(out, rows)
    assert theirs.shape == ours.shape == (2, 128, 49152)
    targets = torch.tensor(rows)[:, 1:]
    lp_theirs = theirs.log_softmax(-1)[:, :-1].gather(-1, targets[..., None])
    lp_ours = ours.log_softmax(-1)[:, :-1].gather(-1, targets[..., None])
    gap = (lp_theirs - lp_ours).abs().mean().item()
    agree = (theirs.argmax(-1) == ours.argmax(-1)).float().mean().item()
    print(f"mean |logprob gap| {gap:.4f} nats, top-1 agreement {agree:.3f}")
    assert gap < 0.05 and agree >= 0.95, (gap, agree)
