"""The Triton kernel tests (tests/triton_cases.py) under TRITON_INTERPRET=1, on CPU.

The interpreter must be on before triton is first imported: triton's own library functions
(tl.sum, tl.max, ...) are decorated then. Run alone, this module switches it on and collects
the cases here. In a larger session another import may have loaded triton already (torchao,
through transformers, does), and then the cases run in one fresh pytest process instead.
"""

import os
import subprocess
import sys
from pathlib import Path

_IN_PROCESS = os.environ.get("TRITON_INTERPRET") == "1" or "triton" not in sys.modules
os.environ["TRITON_INTERPRET"] = "1"

if _IN_PROCESS:
    from .triton_cases import *  # noqa: F403  (the test functions, collected here)
else:

    def test_triton_kernels_in_a_fresh_interpreter_process():
        env = dict(os.environ, TRITON_INTERPRET="1")
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
