"""ServerConfig: everything `llmtool serve` takes, frozen; the engine's part is an EngineConfig."""

from dataclasses import dataclass, field

from ..engine.config import EngineConfig


@dataclass(frozen=True)
class ServerConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None  # None: the --model reference as given
    api_key: str | None = None  # None: no authentication
    max_queue: int = 256  # requests waiting beyond the running batch before 429
    request_timeout: float | None = None  # seconds per request; None: no limit
    cors_origins: tuple[str, ...] = ()
    shutdown_grace: float = 30.0  # seconds in-flight requests get after SIGTERM
    max_body_bytes: int = 16 * 2**20  # a request body over this is a 413, unread
    header_timeout: float = 10.0  # seconds a client gets to send a request's headers (else 408)
    body_timeout: float = 30.0  # seconds from the headers to the end of the body (else 408)
    retry_after: int = 1  # seconds, the Retry-After of a 429 or a 503 while loading

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.engine.model

    @property
    def max_pending(self) -> int:
        """Unfinished engine requests allowed at once: the running batch plus the queue."""
        return self.engine.max_num_seqs + self.max_queue

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"
