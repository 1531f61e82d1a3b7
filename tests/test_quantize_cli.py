"""`llmtool quantize` end to end on the default model: the checkpoint it writes (files, config,
GPTQ v1 / AWQ tensors), that our loader serves exactly the model the report scored, that
transformers reads the config, and the clear errors of bad input."""

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.quantized import LLMTOOL, SEQ_LEN, quantize_cli

from .test_cli_errors import error_line, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.real_model]


def served_perplexity(path: Path, tokens: int, seq_len: int) -> float:
    """The checkpoint through our loader and kernels (what `llmtool serve` runs)."""
    from llmtool.core.models.loader import load_model
    from llmtool.core.quant.calibration import evaluation_windows
    from llmtool.core.quant.perplexity import perplexity

    loaded = load_model(str(path), fast_tokenizer=False)
    model = loaded.model.prepare_for_inference()
    return perplexity(model, evaluation_windows(loaded.tokenizer, tokens, seq_len))


def tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_checkpoint_loads_and_serves_the_model_the_report_scored(tmp_path, method, quantized):
    out, report = quantized(method)
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "quant_report.json"} <= files
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{method}.tmp")]  # temp dir renamed away
    config = json.loads((out / "config.json").read_text())
    q = config["quantization_config"]
    t = tensors(out)
    proj = "model.layers.0.self_attn.q_proj"
    assert f"{proj}.weight" not in t and "lm_head.weight" not in t  # tied: embeddings only
    if method == "awq":
        assert q == {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm",
                     "modules_to_not_convert": None}
        assert t[f"{proj}.qweight"].shape == (576, 576 // 8) and t[f"{proj}.qzeros"].shape == (9, 576 // 8)
        assert f"{proj}.g_idx" not in t
    else:
        assert q["quant_method"] == "gptq" and q["checkpoint_format"] == "gptq" and q["sym"] is True
        assert q["bits"] == 4 and q["group_size"] == 64 and q["desc_act"] is False
        assert t[f"{proj}.qweight"].shape == (576 // 8, 576) and t[f"{proj}.qzeros"].shape == (9, 576 // 8)
        assert torch.all(t[f"{proj}.qzeros"] == 0x77777777)  # sym 4-bit: z = 8 stored as 7 in v1
        assert t[f"{proj}.g_idx"].tolist() == [i // 64 for i in range(576)]
    assert t[f"{proj}.scales"].dtype == torch.float16 and t["model.norm.weight"].dtype == torch.float16
    assert report["ppl_after"] > report["ppl_before"] > 1 and report["num_quantized"] == 210
    assert report["size_bytes"] < 0.45 * report["size_fp16_bytes"]
    assert json.loads((out / "quant_report.json").read_text()) == report
    # What our engine loads is the model the report scored (fp16 storage and kernels aside).
    served = served_perplexity(out, report["evaluation_tokens"], SEQ_LEN)
    assert math.isclose(served, report["ppl_after"], rel_tol=0.01), (served, report["ppl_after"])

    # transformers reads the config and its quantization_config.
    import transformers

    hf = transformers.AutoConfig.from_pretrained(out)
    assert hf.quantization_config["quant_method"] == method.replace("rtn", "gptq")
    inspect = subprocess.run([str(LLMTOOL), "models", "inspect", str(out), "--json", "-"], capture_output=True, text=True)
    info = json.loads(inspect.stdout)
    assert info["quantization"].startswith(f"{method.replace('rtn', 'gptq')} 4-bit, group 64")
    assert 130e6 < info["num_params"] < 140e6
    if method == "rtn":  # the serving engine runs it: batched requests through the int4 kernels
        bench = subprocess.run(
            [str(LLMTOOL), "bench", "--model", str(out), "-c", "2", "-n", "4", "--warmup", "0",
             "--input-len", "32", "--output-len", "8", "--json", str(tmp_path / "bench.json")],
            capture_output=True, text=True, timeout=300,
        )
        assert bench.returncode == 0, bench.stdout + bench.stderr
        summary = json.loads((tmp_path / "bench.json").read_text())["summary"]
        assert summary["num_completed"] == 4 and summary["num_output_tokens"] == 32


def test_eight_bit_rtn_is_within_one_percent(tmp_path):
    args = ["--method", "rtn", "--bits", "8", "--group-size", "64", "--eval-tokens", "8192"]
    _, report = quantize_cli(tmp_path, "rtn8", *args, shared=False)
    assert report["ppl_after"] / report["ppl_before"] - 1 < 0.01, report


@pytest.mark.parametrize(
    "args, code, message",
    [
        ([], 2, "group size 128 does not divide the input size 576 of model.layers.0.self_attn.q_proj: use 32, 64, -1"),
        (["--method", "awq", "--bits", "8"], 2, "awq supports 4-bit weights, not 8-bit"),
        (["--bits", "3"], 2, "gptq supports 4 or 8-bit weights, not 3-bit"),
        (["--group-size", "64", "--calib", "missing.txt"], 2, "calibration file missing.txt not found"),
        (["--group-size", "64", "--calib", "short.txt"], 2, "fewer than one window of 512"),
        (["--method", "rtn", "--desc-act"], 2, "--desc-act (act-order) is a GPTQ option"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, code, message):
    (tmp_path / "short.txt").write_text("To be, or not to be, that is the question.")
    result = run_cli(tmp_path, "quantize", "smollm2-135m", "-o", "out", *args)
    assert message in error_line(result, code)
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_and_existing_output(tmp_path):
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    line = error_line(run_cli(tmp_path, "quantize", str(gpt2), "-o", "out", "--method", "rtn"), 1)
    assert "GPT2" in line or "gpt2" in line
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    line = error_line(run_cli(tmp_path, "quantize", "smollm2-135m", "-o", "full", "--method", "rtn"), 1)
    assert "exists and is not empty" in line and (tmp_path / "full" / "keep.txt").read_text() == "mine"
