"""`pip install .` (not editable) into a fresh venv gives a working package and console script.

The venv gets llmtool without dependencies plus only typer and rich: that is enough for
`--help` and `import llmtool.core`, which must never import torch, and keeps the test fast.
"""

import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_non_editable_install(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", str(REPO)], check=True, cwd=tmp_path)
    subprocess.run([*pip, "typer", "rich"], check=True, cwd=tmp_path)

    site = Path(
        subprocess.check_output(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    top = {p.name for p in site.iterdir()}
    assert "llmtool" in top
    assert not {"cli", "core", "kernels"} & top, f"generic names leaked into site-packages: {top}"
    assert not (site / "llmtool" / "__init__.py").exists(), "llmtool must stay a namespace package"
    # Every source package must be installed (a subpackage missing from pyproject's list is not).
    for init in (REPO / "cli", REPO / "core", REPO / "kernels"):
        for pkg in init.rglob("__init__.py"):
            rel = pkg.parent.relative_to(REPO)
            assert (site / "llmtool" / rel / "__init__.py").is_file(), f"{rel} is not installed"

    help_run = subprocess.run(
        [str(env_dir / "bin" / "llmtool"), "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert help_run.returncode == 0, help_run.stderr
    assert "models" in help_run.stdout and "generate" in help_run.stdout

    imported = subprocess.run(
        [str(py), "-c", "import llmtool.core, sys; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "False"


def test_console_script_version():
    llmtool = Path(sys.executable).parent / "llmtool"
    out = subprocess.run([str(llmtool), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("llmtool 0.")
