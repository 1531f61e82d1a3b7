"""`--config FILE.toml` presets: top-level keys, [command] tables, and flags that win over both.

Most tests pick values that fail before any weights load (an unknown model name, a bad dtype),
so the error line shows which value won without running a model; one real_model test checks
a full generation.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmtool.cli.main import app

from .conftest import TINY_LLAMA

LLMTOOL = Path(sys.executable).parent / "llmtool"
SAMPLE_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "sample_configs").glob("*.toml"))


def invoke(*args: str):
    return CliRunner().invoke(
        app, list(args), env={"COLUMNS": "200", "LLMTOOL_DEBUG": None, "HF_HUB_OFFLINE": "1"}
    )


def error_line(result, exit_code: int) -> str:
    assert result.exit_code == exit_code, f"exit {result.exit_code}\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def usage_error_line(result) -> str:
    assert result.exit_code == 2, f"exit {result.exit_code}\n{result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if "Invalid value" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def preset(tmp_path: Path, text: str) -> str:
    path = tmp_path / "preset.toml"
    path.write_text(text)
    return str(path)


def tiny_model_dir(tmp_path: Path) -> str:
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_LLAMA))
    return str(folder)


# ----------------------------------------------------------------------------- which value wins


def test_top_level_key_sets_the_option(tmp_path):
    line = error_line(invoke("generate", "hi", "--config", preset(tmp_path, 'model = "nosuchmodel"\n')), 1)
    assert "unknown model 'nosuchmodel'" in line


def test_command_line_flag_wins_over_the_file(tmp_path):
    config = preset(tmp_path, 'model = "nosuchmodel"\n')
    for args in (["--config", config, "-m", "othermodel"], ["-m", "othermodel", "--config", config]):
        line = error_line(invoke("generate", "hi", *args), 1)
        assert "unknown model 'othermodel'" in line


def test_command_table_sets_options_and_beats_top_level(tmp_path):
    model = tiny_model_dir(tmp_path)
    config = preset(tmp_path, f'dtype = "int5"\n[generate]\nmodel = "{model}"\ndtype = "int3"\n')
    line = error_line(invoke("generate", "hi", "--config", config), 2)
    assert "unknown dtype 'int3'" in line
    line = error_line(invoke("generate", "hi", "--config", config, "--dtype", "int4"), 2)
    assert "unknown dtype 'int4'" in line


def test_dashed_keys_map_to_options(tmp_path):
    line = usage_error_line(invoke("generate", "hi", "--config", preset(tmp_path, "max-tokens = 0\n")))
    assert "--max-tokens" in line  # min=1 still applies to values from the file


def test_keys_for_other_commands_are_ignored(tmp_path):
    # `tensors` belongs to `models inspect`, `port` to nothing yet, [serve] to another command.
    text = 'model = "nosuchmodel"\ntensors = true\nport = 8000\n[serve]\nworkers = 4\n[inspect]\nbogus = 1\n'
    line = error_line(invoke("generate", "hi", "--config", preset(tmp_path, text)), 1)
    assert "unknown model 'nosuchmodel'" in line


def test_preset_fills_an_argument_default(tmp_path):
    # `models inspect` takes the model as an argument; its table still provides the default.
    config = preset(tmp_path, '[inspect]\nmodel = "nosuchmodel"\n[generate]\nbogus = 1\n')
    line = error_line(invoke("models", "inspect", "--config", config), 1)
    assert "unknown model 'nosuchmodel'" in line


@pytest.mark.parametrize("command", [["generate"], ["models", "inspect"]], ids=" ".join)
@pytest.mark.parametrize("config", SAMPLE_CONFIGS, ids=lambda p: p.name)
def test_sample_configs_are_valid_presets(config, command):
    # --config is eager and comes first, so the file is read and checked before --help exits.
    result = invoke(*command, "--config", str(config), "--help")
    assert result.exit_code == 0, result.output


# ----------------------------------------------------------------------------- bad presets: exit 2, no traceback


def test_unknown_key_in_command_table(tmp_path):
    line = usage_error_line(
        invoke("generate", "hi", "--config", preset(tmp_path, "[generate]\nbogus = 1\nzap = 2\n"))
    )
    assert "unknown options: bogus, zap" in line


def test_wrong_value_type(tmp_path):
    line = usage_error_line(invoke("generate", "hi", "--config", preset(tmp_path, 'max_tokens = "many"\n')))
    assert "--max-tokens" in line


def test_invalid_toml(tmp_path):
    line = usage_error_line(invoke("generate", "hi", "--config", preset(tmp_path, "max_tokens = [\n")))
    assert "not valid TOML" in line


def test_file_that_is_not_utf8(tmp_path):
    (tmp_path / "latin1.toml").write_bytes(b'system = "caf\xe9"\n')
    line = usage_error_line(invoke("generate", "hi", "--config", str(tmp_path / "latin1.toml")))
    assert "not valid TOML" in line


def test_command_name_used_as_a_plain_key(tmp_path):
    line = usage_error_line(invoke("generate", "hi", "--config", preset(tmp_path, "generate = 1\n")))
    assert "must be a table" in line


def test_missing_file(tmp_path):
    line = usage_error_line(invoke("generate", "hi", "--config", str(tmp_path / "missing.toml")))
    assert "cannot read" in line


# ----------------------------------------------------------------------------- a real generation


def _generate(tmp_path: Path, *args: str) -> dict:
    env = {
        **os.environ,
        "LLMTOOL_CACHE_DIR": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "200",
    }
    out = tmp_path / "out.json"
    result = subprocess.run(
        [str(LLMTOOL), "generate", "The capital of France is", "--json", str(out), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


@pytest.mark.real_model
def test_preset_drives_a_real_generation_and_flags_win(tmp_path):
    # fp32 from the [generate] table also keeps the test quick where bf16 is slow on CPU.
    config = preset(tmp_path, 'max_tokens = 3\nraw = true\n[generate]\ndtype = "fp32"\n')
    first = _generate(tmp_path, "--config", config)
    # Greedy " Paris." is three tokens with no EOS, so the file's limit is what stopped it.
    assert first["completion_tokens"] == 3
    assert first["dtype"] == "fp32"
    assert first["prompt_tokens"] <= 8  # raw: the five-word prompt alone, no chat template around it
    second = _generate(tmp_path, "--config", config, "--max-tokens", "2")
    assert second["completion_tokens"] == 2
    assert second["token_ids"] == first["token_ids"][:2]
    assert second["prompt_tokens"] == first["prompt_tokens"]  # raw=true from the file still applies
