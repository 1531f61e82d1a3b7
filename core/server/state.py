"""ServerState: the model behind the server, loaded in a background thread.

The HTTP server binds first and answers /health with 503 while the weights load, so a load
balancer sees the process at once and a cold start costs only our own loader's time.
"""

import logging
import os
import threading
import time
from collections.abc import Callable

from .config import ServerConfig
from .metrics import ServerMetrics
from .prompt_limit import longest_token_chars
from .token_text import token_texts

log = logging.getLogger("llmtool.server")


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), for the cold-start figure; else None."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


class ServerState:
    LOADING, READY, FAILED = "loading", "ready", "failed"

    def __init__(self, config: ServerConfig):
        self.config = config
        self.metrics = ServerMetrics(config.model_name, speculative=config.engine.speculative is not None)
        self.status = self.LOADING
        self.error: str | None = None  # why loading failed
        self.engine = None  # AsyncEngine, once ready
        self.tokenizer = None
        self.token_text: Callable[[int], str] | None = None  # token id -> text, for logprobs
        self.token_bytes: Callable[[int], bytes] | None = None
        self.max_model_len = 0
        self.max_prompt_chars = 0  # longer text prompts cannot fit, whatever their tokens
        self.vocab_size = 0
        self.info: dict[str, object] = {}  # what the startup panel shows
        self.created = int(time.time())
        self._thread: threading.Thread | None = None

    def start_loading(
        self, on_ready: Callable[["ServerState"], None], on_failure: Callable[["ServerState"], None]
    ) -> None:
        """Load in a daemon thread (a SIGTERM during a load must not wait for it)."""

        def run() -> None:
            try:
                self._load()
            except BaseException as e:  # any failure: report it and let the server exit 1
                self.error = str(e) or repr(e)
                self.status = self.FAILED
                log.debug("loading failed", exc_info=True)
                on_failure(self)
                return
            self.status = self.READY
            on_ready(self)

        self._thread = threading.Thread(target=run, name="llmtool-model-load", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        from ..engine.async_engine import AsyncEngine
        from ..engine.engine import Engine
        from ..engine.sampling_params import SamplingParams
        from ..models.loader import load_model
        from ..runtime import dtype_name

        cfg = self.config.engine
        start = time.perf_counter()
        log.debug("loading starts %.2f s after process start", process_age() or 0.0)
        loaded = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
        loaded_at = time.perf_counter()
        engine = Engine(cfg, loaded=loaded)
        # One token through every path now, so the first user does not pay for lazy set-up.
        engine.generate([[0, 1]], SamplingParams(max_tokens=1, temperature=0.0))
        log.debug(
            "weights %.2f s, engine and warm-up %.2f s", loaded_at - start, time.perf_counter() - loaded_at
        )
        self.tokenizer = loaded.require_tokenizer()
        self.token_text, self.token_bytes = token_texts(self.tokenizer)
        self.max_model_len = engine.max_model_len
        self.max_prompt_chars = engine.max_model_len * longest_token_chars(self.tokenizer)
        self.vocab_size = loaded.spec.vocab_size
        self.info = {
            "model": cfg.model,
            "served as": self.config.model_name,
            "dtype": dtype_name(loaded.dtype),
            "device": str(loaded.device),
            "KV cache": f"{engine.capacity_tokens:,} tokens ({engine.block_manager.num_blocks} blocks)",
            "max model len": f"{engine.max_model_len:,}",
            "batch": f"{cfg.max_num_seqs} sequences, queue {self.config.max_queue}",
            "load time": f"{time.perf_counter() - start:.1f} s" + _since_start(),
        }
        if cfg.speculative is not None:
            spec = cfg.speculative
            method = spec.method if spec.draft_model is None else f"draft:{spec.draft_model}"
            self.info["speculative"] = f"{method}, up to {spec.num_speculative_tokens} tokens per step"
        self.engine = AsyncEngine(engine, max_pending=self.config.max_pending).start()

    @property
    def health(self) -> tuple[int, dict]:
        """(HTTP status, body) for /health: 200 only when requests can be served."""
        if self.status == self.LOADING:
            return 503, {"status": "loading"}
        if self.status == self.FAILED:
            return 503, {"status": "failed", "error": self.error}
        dead = self.engine.dead_reason
        if dead is not None:
            return 503, {"status": "error", "error": dead}
        return 200, {"status": "ok"}

    async def shutdown(self) -> None:
        if self.engine is not None:
            await self.engine.shutdown()


def _since_start() -> str:
    age = process_age()
    return "" if age is None else f" (ready {age:.1f} s after process start)"
