"""`llmtool serve`: the OpenAI-compatible server on our engine."""

import logging
from typing import Annotated

import typer

from ..core.models.aliases import DEFAULT_MODEL
from .console import err_console
from .errors import handle_errors
from .options import ConfigOpt, DtypeOpt, ModelOpt


@handle_errors
def serve(
    model: ModelOpt = DEFAULT_MODEL,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0 for all).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8000,
    served_model_name: Annotated[
        str | None, typer.Option("--served-model-name", help="Model name clients use (default: --model).")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="LLMTOOL_API_KEY",
            show_default=False,
            help="Require 'Authorization: Bearer KEY' on /v1.",
        ),
    ] = None,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=0, help="Requests that may wait beyond the batch; more get 429.")
    ] = 256,
    max_num_seqs: Annotated[
        int, typer.Option("--max-num-seqs", min=1, help="Sequences decoded together.")
    ] = 64,
    max_model_len: Annotated[
        int | None, typer.Option("--max-model-len", min=32, help="Context limit (default: the model's).")
    ] = None,
    kv_cache_memory: Annotated[
        str | None,
        typer.Option(
            "--kv-cache-memory", help="KV cache size, e.g. 2GiB (default: 10% of free RAM, 256MiB..4GiB)."
        ),
    ] = None,
    max_num_batched_tokens: Annotated[
        int, typer.Option("--max-num-batched-tokens", min=1, help="Tokens per step (chunked prefill budget).")
    ] = 2048,
    request_timeout: Annotated[
        float | None,
        typer.Option("--request-timeout", min=0.001, help="Seconds before a request ends with 408."),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option("--cors-origin", help="Allow browser calls from this origin (repeatable, * for any)."),
    ] = None,
    shutdown_grace: Annotated[
        float,
        typer.Option(
            "--shutdown-grace",
            min=0,
            help="Seconds in-flight requests get after SIGTERM; then streams end with an error event.",
        ),
    ] = 30.0,
    max_body_bytes: Annotated[
        str,
        typer.Option(
            "--max-body-bytes", help="Largest request body, e.g. 16MiB or 1048576; a larger one gets 413."
        ),
    ] = "16MiB",
    header_timeout: Annotated[
        float,
        typer.Option(
            "--header-timeout", min=0.1, help="Seconds a client gets to send a request's headers (else 408)."
        ),
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(
            "--body-timeout",
            min=0.1,
            help="Seconds from a request's headers to the end of its body (else 408).",
        ),
    ] = 30.0,
    speculative: Annotated[
        str | None,
        typer.Option(
            "--speculative",
            help="Speculative decoding: 'ngram' (prompt lookup) or 'draft:MODEL' (a smaller model, same tokenizer).",
        ),
    ] = None,
    num_speculative_tokens: Annotated[
        int,
        typer.Option("--num-speculative-tokens", help="Most tokens drafted per step (with --speculative)."),
    ] = 5,
    dtype: DtypeOpt = "auto",
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info or warning.")] = "info",
    config: ConfigOpt = None,
) -> None:
    """Serve MODEL with OpenAI's API: /v1/completions, /v1/chat/completions, /v1/models,
    /health, /metrics (Prometheus), /version.

    Example: llmtool serve --port 8000, then
    curl localhost:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "Hi"}]}'

    Speculative decoding: llmtool serve --speculative ngram --num-speculative-tokens 5
    (greedy output is unchanged, sampled output keeps the model's distribution).
    """
    from ..core.engine.config import EngineConfig, SpeculativeConfig
    from ..core.errors import UsageError
    from ..core.server.config import ServerConfig
    from ..core.server.run import serve as run_server
    from ..core.units import parse_bytes

    level = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}.get(log_level.lower())
    if level is None:
        raise UsageError(f"--log-level must be debug, info or warning, not '{log_level}'")
    spec_config = None
    if speculative is not None:
        spec_config = SpeculativeConfig.parse(speculative, num_speculative_tokens)
        if spec_config.draft_model:
            _check_draft_vocab(model, spec_config.draft_model)
    elif num_speculative_tokens != 5:
        raise UsageError("--num-speculative-tokens needs --speculative")
    body_limit = parse_bytes(max_body_bytes)
    if body_limit < 1024:
        raise UsageError(f"--max-body-bytes must be at least 1KiB, got '{max_body_bytes}'")
    _setup_logging(level)
    server_config = ServerConfig(
        engine=EngineConfig(
            model=model,
            dtype=dtype,
            kv_cache_memory=parse_bytes(kv_cache_memory) if kv_cache_memory else None,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=max_model_len,
            speculative=spec_config,
        ),
        host=host,
        port=port,
        served_model_name=served_model_name,
        api_key=api_key or None,
        max_queue=max_queue,
        request_timeout=request_timeout,
        cors_origins=tuple(cors_origin or ()),
        shutdown_grace=shutdown_grace,
        max_body_bytes=body_limit,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
    )
    run_server(server_config, on_listening=_listening, on_ready=_ready)
    err_console.print("[dim]server stopped[/]")


def _check_draft_vocab(model: str, draft: str) -> None:
    """Fail before serving when the draft cannot share the target's token ids (headers only;
    the engine compares the tokenizers themselves once both are loaded)."""
    from ..core.errors import UsageError
    from ..core.models.loader import load_spec
    from ..core.models.resolve import resolve_model

    target_vocab = load_spec(resolve_model(model)).vocab_size
    draft_vocab = load_spec(resolve_model(draft)).vocab_size
    if draft_vocab != target_vocab:
        raise UsageError(
            f"draft model {draft} has a vocabulary of {draft_vocab} tokens, {model} {target_vocab}: "
            "a draft must share the target's tokenizer"
        )


def _listening(state) -> None:
    err_console.print(
        f"Loading [bold]{state.config.engine.model}[/]; listening on {state.config.url} "
        "(/health answers 503 until the model is ready)",
        highlight=False,
    )


def _ready(state) -> None:
    from rich.panel import Panel
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim")
    table.add_column()
    for key, value in state.info.items():
        table.add_row(key, str(value))
    url = state.config.url
    table.add_row("API", f"{url}/v1  (chat/completions, completions, models)")
    table.add_row("ops", f"{url}/health  {url}/metrics")
    if state.config.api_key:
        table.add_row("auth", "Bearer API key required on /v1")
    err_console.print(Panel(table, title="llmtool serve: ready", border_style="green", expand=False))


def _setup_logging(level: int) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=err_console, show_path=False, markup=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(message)s", datefmt="%H:%M:%S"))
    for name in ("llmtool", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(level)
    logging.getLogger("uvicorn.error").setLevel(max(level, logging.WARNING))  # its start-up chatter
