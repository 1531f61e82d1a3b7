"""`llmtool generate`: a greedy completion from a model, streamed to the terminal."""

import json
import time
from typing import Annotated

import typer

from ..core.errors import UsageError
from ..core.models.aliases import DEFAULT_MODEL
from .console import console, err_console
from .errors import handle_errors
from .options import ConfigOpt, DtypeOpt, JsonOpt, ModelOpt
from .output import write_json
from .progress import rich_progress


@handle_errors
def generate(
    prompt: Annotated[str, typer.Argument(help="The user message (or raw text with --raw).")],
    model: ModelOpt = DEFAULT_MODEL,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Most tokens to generate.")] = 64,
    raw: Annotated[bool, typer.Option("--raw", help="Complete the text as is; no chat template.")] = False,
    system: Annotated[
        str | None, typer.Option("--system", help="System message for the chat template.")
    ] = None,
    dtype: DtypeOpt = "auto",
    json_path: JsonOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Greedy generation: the chat template is applied when the model has one.

    Example: llmtool generate "What is a GPU?" --max-tokens 48
    """
    from ..core.engine.detokenizer import Detokenizer
    from ..core.engine.sampling_params import SamplingParams
    from ..core.models.generate import greedy_generate
    from ..core.models.loader import load_model
    from ..core.runtime import dtype_name

    with rich_progress() as progress:
        loaded = load_model(model, dtype=dtype, progress=progress)
    tokenizer = loaded.require_tokenizer()
    if not raw and tokenizer.chat_template is None:
        raise UsageError(f"{model} has no chat template: pass --raw to complete plain text")
    if raw:
        prompt_ids = tokenizer.encode(prompt)
    else:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer.encode(text, add_special_tokens=False)

    detokenizer = Detokenizer(tokenizer, prompt_ids, SamplingParams(max_tokens=max_tokens))
    to_terminal = json_path is None or str(json_path) != "-"
    first_token_at: list[float] = []

    def on_token(token_id: int) -> None:
        if not first_token_at:
            first_token_at.append(time.perf_counter())
        if to_terminal:
            console.print(
                detokenizer.push([token_id]).text, end="", soft_wrap=True, highlight=False, markup=False
            )

    start = time.perf_counter()
    output_ids = greedy_generate(
        loaded.model.prepare_for_inference(), prompt_ids, max_tokens, loaded.spec.eos_token_ids, on_token
    )
    elapsed = time.perf_counter() - start
    if to_terminal:
        console.print(detokenizer.flush(), soft_wrap=True, highlight=False, markup=False)
    ttft = first_token_at[0] - start
    decode_rate = (len(output_ids) - 1) / (elapsed - ttft) if len(output_ids) > 1 else 0.0
    stats = {
        "model": model,
        "dtype": dtype_name(loaded.dtype),
        "prompt_tokens": len(prompt_ids),
        "completion_tokens": len(output_ids),
        "load_s": round(loaded.load_seconds, 3),
        "ttft_s": round(ttft, 4),
        "decode_tokens_per_s": round(decode_rate, 2),
        "text": tokenizer.decode(output_ids, skip_special_tokens=True),
        "token_ids": output_ids,
    }
    if json_path:
        write_json(json.dumps(stats, indent=2), json_path)
    err_console.print(
        f"[dim]{stats['prompt_tokens']} prompt + {stats['completion_tokens']} generated tokens, "
        f"{stats['dtype']}, load {loaded.load_seconds:.1f} s, first token {ttft * 1000:.0f} ms, "
        f"decode {decode_rate:.1f} tok/s[/]"
    )
