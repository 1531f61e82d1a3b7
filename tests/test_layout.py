"""The repo's top-level folders never shadow an installed package, and nothing we start puts the
repo root ahead of site-packages.

transformers 5.25 imports the hub package `kernels`; a Python started with our repo root first
on sys.path imported our `kernels/` folder instead and `make demo` broke. The first test catches
the next such clash when a dependency adds a module named like one of our folders; the others
check that the suite itself (and the Pythons it starts) keep the root behind site-packages.
"""

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# Clashes we know of and keep (the product card fixes the folder names): each is safe only because
# nothing puts the repo root ahead of site-packages, which the tests below check.
KNOWN_CLASHES = {"kernels": "Hugging Face's hub-kernel loader, imported by transformers >= 5.25"}


def test_no_top_level_folder_is_named_like_an_installed_module():
    provided = importlib.metadata.packages_distributions()  # module name -> distributions
    clashes = {
        folder.name: provided[folder.name]
        for folder in ROOT.iterdir()
        if folder.is_dir()
        and folder.name in provided
        and folder.name not in KNOWN_CLASHES
        and "llmtool" not in provided[folder.name]
    }
    assert not clashes, f"top-level folders named like installed modules (they would shadow them): {clashes}"


def test_known_clashes_resolve_to_the_installed_module_from_the_repo_root():
    """A Python started in the repo root, as make and the tests start it, imports the installed
    module, not our folder (the failure transformers 5.25 showed: no 'CUDAProperties' in kernels)."""
    provided = importlib.metadata.packages_distributions()
    for name in KNOWN_CLASHES:
        if name not in provided:
            continue
        code = f"import importlib.util; print(importlib.util.find_spec({name!r}).origin)"
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        assert not Path(out.stdout.strip()).resolve().is_relative_to(ROOT / name), (name, out.stdout)


def _root_index(path: list[str]) -> int | None:
    entries = [os.path.realpath(p or os.getcwd()) for p in path]
    return entries.index(str(ROOT)) if str(ROOT) in entries else None


def test_repo_root_is_behind_site_packages_in_the_test_process():
    site = os.path.realpath(sysconfig.get_paths()["purelib"])
    entries = [os.path.realpath(p or os.getcwd()) for p in sys.path]
    root = _root_index(sys.path)
    assert root is None or root > entries.index(site), sys.path[:5]


def test_pythons_the_tests_start_do_not_put_the_root_first():
    """Subprocesses started from the repo root (servers, CLIs, `python -c`) inherit the safe path."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys, json; print(json.dumps(sys.path))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    path = json.loads(out.stdout)
    assert _root_index(path) is None, path[:3]
