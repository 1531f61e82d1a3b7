"""EleutherAI's lm-evaluation-harness against a real `llmtool serve`: its `local-completions`
model (echo + logprobs, max_tokens 1, batched prompts) on a small multiple-choice task shipped
here (tests/data/lm_eval_mc.jsonl, 60 documents, no hub) gives exactly the acc and acc_norm of
lm-eval's own `hf` model on the same weights in fp32, with token-id prompts, string prompts
(tokenized_requests=False) and batch size 4; a bf16 server lands within 2 documents of it."""

import json
import os
from pathlib import Path

import pytest

from llmtool.core.runtime import cpu_flags

from .server_process import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.real_model, pytest.mark.peer]

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval[api] is not installed")

DATA = Path(__file__).parent / "data" / "lm_eval_mc.jsonl"
TASK = "llmtool_mc"
SERVED_NAME = "smol"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """The task's YAML, pointing at the shipped JSON lines by absolute path."""
    folder = tmp_path_factory.mktemp("lm_eval_task")
    yaml = f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {DATA}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
    (folder / f"{TASK}.yaml").write_text(yaml)
    return folder


def evaluate(task_dir: Path, model: str, model_args: str) -> dict[str, float]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(task_dir)),
        batch_size=4,
    )
    scores = out["results"][TASK]
    return {"acc": scores["acc,none"], "acc_norm": scores["acc_norm,none"]}


def _served(smol_hf: Path, dtype: str) -> ServerProcess:
    env = None
    if dtype == "bf16" and "avx512bw" not in cpu_flags():
        env = {"LLMTOOL_CPU_KERNELS": "0"}  # oneDNN cannot pack bf16 weights on this CPU
    args = ("--model", str(smol_hf), "--dtype", dtype, "--served-model-name", SERVED_NAME)
    return ServerProcess(*args, env=env).wait_ready(timeout=300)


def _completions_args(server: ServerProcess, smol_hf: Path, tokenized: bool) -> str:
    return (
        f"base_url={server.url}/v1/completions,model={SERVED_NAME},tokenizer={smol_hf},"
        f"tokenizer_backend=huggingface,tokenized_requests={tokenized},num_concurrent=1,max_retries=1"
    )


def test_local_completions_equals_hf_in_fp32_and_bf16_is_close(smol_hf, task_dir):
    expected = evaluate(task_dir, "hf", f"pretrained={smol_hf},dtype=float32,device=cpu")
    server = _served(smol_hf, "fp32")
    try:
        token_ids = evaluate(task_dir, "local-completions", _completions_args(server, smol_hf, True))
        strings = evaluate(task_dir, "local-completions", _completions_args(server, smol_hf, False))
    finally:
        assert server.stop() == 0, server.output()
    print(
        json.dumps({"hf_fp32": expected, "served_fp32_token_ids": token_ids, "served_fp32_strings": strings})
    )
    assert token_ids == expected
    assert strings == expected
    server = _served(smol_hf, "bf16")
    try:
        bf16 = evaluate(task_dir, "local-completions", _completions_args(server, smol_hf, True))
    finally:
        assert server.stop() == 0, server.output()
    print(json.dumps({"served_bf16_token_ids": bf16}))
    for metric in ("acc", "acc_norm"):
        assert abs(bf16[metric] - expected[metric]) * 60 <= 2 + 1e-9, (metric, bf16, expected)
