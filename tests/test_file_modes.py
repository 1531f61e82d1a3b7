"""Files and folders we write take the modes the user's umask gives any file they create
(0644 / 0755 under umask 022, 0640 / 0750 under 027), though they are built under temporary
names (tempfile makes 0600 files and 0700 folders) and renamed into place. Covers the one
helper (core/files.py) and what goes through it: --json results, exported and quantized
checkpoints, GGUF files, hardware profiles; and a CLI run under a umask of its own."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from llmtool.core.files import atomic_dir, atomic_path, write_text

LLMTOOL = str(Path(sys.executable).with_name("llmtool"))
UMASKS = [0o022, 0o027]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def expect(path: Path, mask: int) -> None:
    """Every folder 0777 & ~mask, every file 0666 & ~mask, all the way down."""
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        assert mode(p) == want, f"{p}: {oct(mode(p))}, want {oct(want)} under umask {oct(mask)}"


@pytest.fixture(params=UMASKS, ids=lambda m: f"umask{m:03o}")
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with a tokenizer: enough for export, quantize's writer and GGUF."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tests.conftest import _save_tiny

    path = tmp_path_factory.mktemp("tiny")
    _save_tiny(path, "llama")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    tok.save(str(path / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>"}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def test_the_helper_gives_files_and_folders_the_umask_modes(umask, tmp_path):
    write_text(tmp_path / "a" / "result.json", "{}\n")  # the parent is made too
    expect(tmp_path / "a" / "result.json", umask)
    with atomic_path(tmp_path / "plot.png", suffix=".png") as tmp:
        assert mode(tmp) == 0o600  # private while half-written...
        tmp.write_bytes(b"png")
    expect(tmp_path / "plot.png", umask)  # ...ordinary once in place
    with atomic_dir(tmp_path / "ckpt") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "w.bin").write_bytes(b"x")
    expect(tmp_path / "ckpt", umask)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left behind


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    (tmp_path / "r.json").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "r.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    with pytest.raises(RuntimeError), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError
    assert (tmp_path / "r.json").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "r.json"
    ]


def test_json_results_and_profiles(umask, tmp_path, monkeypatch):
    from llmtool.cli.output import write_json
    from llmtool.core.capacity.catalog import gpu
    from llmtool.core.capacity.profiles import save_profile
    from llmtool.core.capacity.step_time import Efficiency

    write_json("{}", tmp_path / "bench.json")
    expect(tmp_path / "bench.json", umask)
    monkeypatch.setenv("LLMTOOL_CONFIG_DIR", str(tmp_path / "config"))
    path = save_profile("cpu-test", gpu("H100-SXM"), Efficiency(), {})
    expect(path, umask)


def test_export_quantize_writer_and_gguf(umask, tiny_dir, tmp_path):
    from llmtool.core.gguf.writer import convert_to_gguf
    from llmtool.core.models.export import export_hf
    from llmtool.core.models.loader import load_model
    from llmtool.core.quant.writer import write_checkpoint

    export_hf(str(tiny_dir), tmp_path / "export")
    expect(tmp_path / "export", umask)
    assert (tmp_path / "export" / "model.safetensors").is_file()

    loaded = load_model(str(tiny_dir), dtype="fp32", device="cpu", fast_tokenizer=False)
    state = {k: v.contiguous() for k, v in loaded.model.state_dict().items()}
    write_checkpoint(
        tmp_path / "quant", loaded, state, {"architectures": ["LlamaForCausalLM"]}, {}, force=False
    )
    expect(tmp_path / "quant", umask)

    convert_to_gguf(str(tiny_dir), tmp_path / "tiny.gguf", "f16")
    expect(tmp_path / "tiny.gguf", umask)


@pytest.mark.parametrize("mask", UMASKS, ids=lambda m: f"umask{m:03o}")
def test_a_cli_run_writes_its_json_with_the_callers_umask(mask, tmp_path):
    out = tmp_path / "plan.json"
    done = subprocess.run(
        [LLMTOOL, "plan-capacity", "--rps", "2", "--model", "llama-3.1-8b", "--quant", "bf16", "--tp", "1",
         "--max-batch", "64", "--num-requests", "40", "--json", str(out)],
        capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(mask),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expect(out, mask)
