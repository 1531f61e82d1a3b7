"""Native CPU kernels, compiled on first use with torch's C++ extension tooling.

Built with -O3 -march=native for this machine and cached under the llmtool cache dir
(keyed by CPU and torch version), so only the first run pays the build (about a minute on 2 cores). Anything
that goes wrong (no compiler, LLMTOOL_CPU_KERNELS=0) leaves the torch path in charge:
the native ops are an accelerator, never a requirement.
"""

import functools
import hashlib
import logging
import os
import platform
import warnings
from pathlib import Path

import torch

_CSRC = Path(__file__).parent / "csrc"
# bindings.cpp #includes the kernel files: one translation unit builds twice as fast.
_SOURCES = [_CSRC / "bindings.cpp"]


def _sources_digest() -> str:
    """torch rebuilds when a listed source or a flag changes; the included kernel files are
    not listed, so their digest goes into the flags."""
    h = hashlib.sha256()
    for path in sorted(_CSRC.glob("*.cpp")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _cache_dir() -> Path:
    base = (
        os.environ.get("LLMTOOL_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmtool"
    )
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    key = hashlib.sha256(f"{cpu}|{platform.machine()}|{torch.__version__}".encode()).hexdigest()[:12]
    return Path(base) / "torch-extensions" / key


def _put_ninja_on_path() -> None:
    """torch calls `ninja` from PATH; the one pip installed sits in the venv, which is not on
    PATH when llmtool runs without activating it."""
    try:
        import ninja

        bin_dir = ninja.BIN_DIR
    except (ImportError, AttributeError):
        return
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


@functools.cache
def cpu_ops():
    """The compiled module, or None when native kernels are unavailable or disabled."""
    if os.environ.get("LLMTOOL_CPU_KERNELS", "1") == "0":
        return None
    try:
        from torch.utils.cpp_extension import load

        build = _cache_dir()
        build.mkdir(parents=True, exist_ok=True)
        _put_ninja_on_path()
        if not (build / "llmtool_cpu_ops.so").exists():
            logging.getLogger("llmtool.kernels").warning(
                "llmtool: building native CPU kernels for this machine (first use only, about a minute)"
            )
        return load(
            name="llmtool_cpu_ops",
            sources=[str(s) for s in _SOURCES],
            extra_include_paths=[str(_CSRC)],
            # Compile flags only: -ffast-math must not reach the link, where GCC 12 would add
            # crtfastmath.o and flush denormals to zero for the whole process.
            # -fopenmp: at::parallel_for is header-inline OpenMP; without it tasks run serially.
            extra_cflags=[
                "-O3",
                "-march=native",
                "-ffast-math",
                "-fopenmp",
                f"-DLLMTOOL_SOURCES={_sources_digest()}",
            ],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build),
            verbose=False,
        )
    except Exception as e:  # a missing compiler or ninja must not break inference
        warnings.warn(
            f"llmtool: native CPU kernels unavailable, using torch ({type(e).__name__}: {e})", stacklevel=2
        )
        return None
