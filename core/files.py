"""Atomic writes of the files and folders we hand the user: results JSON, plots, GGUF files,
exported and quantized checkpoints, hardware profiles.

Everything is built under a temporary name beside the target and renamed into place, so a
crash never leaves a half-written output. tempfile.mkstemp / mkdtemp create 0600 files and
0700 folders on purpose (their names are guessable in a shared /tmp); renamed into the
user's folder those modes would make our outputs private where `cp`, `touch` or `mkdir`
would not. So before the rename every file takes 0666 and every folder 0777, both less the
process umask: exactly what `open()` and `mkdir()` would have made. Not here: what goes in
the files (each caller's own format).
"""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def umask() -> int:
    """The process umask. Linux states it in /proc (no race); elsewhere os.umask must set it to
    read it, so it is set straight back."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~umask()


def dir_mode() -> int:
    return 0o777 & ~umask()


def _publish_tree(root: Path) -> None:
    """Give a freshly built folder, and everything in it, the modes open() and mkdir() give."""
    fmode, dmode = file_mode(), dir_mode()
    os.chmod(root, dmode)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), dmode)
        for name in files:
            os.chmod(os.path.join(folder, name), fmode)


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside `path` for a writer that wants a file name (savefig, a
    GGUF writer); on success it takes the usual file mode and replaces `path`, on any error it
    is removed. `suffix` keeps writers that go by the extension (matplotlib) happy."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """`text` into `path`, atomically, as an ordinary user file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def atomic_dir(out_dir: Path, replace: bool = False) -> Iterator[Path]:
    """Yields a temporary folder beside `out_dir` to fill; on success its tree takes the usual
    modes and it becomes `out_dir` (an existing `out_dir` is removed first when `replace`);
    on any error it is removed and `out_dir` is left as it was."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        yield tmp
        _publish_tree(tmp)
        if out_dir.exists() or out_dir.is_symlink():
            if not replace:
                raise FileExistsError(f"{out_dir} exists")
            shutil.rmtree(out_dir) if out_dir.is_dir() and not out_dir.is_symlink() else out_dir.unlink()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
