"""Counting from a ModelSpec (core/models/counts.py) on every family's tiny checkpoint:
`models inspect` parameters equal transformers' num_parameters(), and plan-capacity reads each
family's config.json (memory: all experts; decode bandwidth: the routed ones)."""

import json

import pytest
from typer.testing import CliRunner

from llmtool.cli.main import app
from llmtool.core.capacity.catalog import gpu, model_spec
from llmtool.core.capacity.memory import MemoryConfig, plan_memory
from llmtool.core.capacity.planner import PlanRequest, predict
from llmtool.core.capacity.slo import LatencySLO
from llmtool.core.capacity.step_time import StepBatch, step_time
from llmtool.core.capacity.traffic import Traffic
from llmtool.core.models import counts
from llmtool.core.models.inspect import inspect_model

from .architectures import TINY, save_tiny


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = save_tiny(path, request.param)
    return request.param, path, hf


def test_inspect_params_equal_transformers(tiny):
    family, path, hf = tiny
    info = inspect_model(str(path))
    expected = hf.num_parameters()
    assert info.num_params == info.counted_params == expected, family
    moe = family in ("qwen3_moe", "mixtral")
    assert (info.num_experts, info.experts_per_token) == ((4, 2) if moe else (1, 1))
    # Active: 2 of 4 experts, each 3 x 64 x expert width, in every layer.
    idle = 2 * 3 * 64 * (32 if family == "qwen3_moe" else 128) * info.num_layers if moe else 0
    assert info.active_params == expected - idle
    spec = model_spec(str(path)).spec
    # 2 x (active linears + router + lm_head) plus, at position 0, one key per layer: 4 x heads x head_dim
    assert info.flops_per_token == 2 * counts.matmul_params(spec) + 4 * 4 * 16 * info.num_layers


def test_inspect_cli_reports_the_same_count(tiny):
    family, path, hf = tiny
    out = CliRunner().invoke(app, ["models", "inspect", str(path), "--json", "-"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output[out.output.index("{") :])
    assert data["num_params"] == data["counted_params"] == hf.num_parameters()


def test_plan_capacity_reads_every_family_config(tiny):
    family, path, hf = tiny
    model = model_spec(str(path / "config.json"))
    assert model.spec.family == family and model.params == hf.num_parameters()
    l4 = gpu("L4")
    mem = plan_memory(model, l4, MemoryConfig(context_len=128))
    assert mem.fits and mem.weight_bytes == 2 * model.params  # bf16, tp 1: every parameter, all experts
    one = step_time(model, l4, "bf16", 1, StepBatch.decoding(1, 64))
    if model.is_moe:  # one token reads its top_k experts only
        unread = model.num_layers * (4 - 2) * counts.expert_params(model.spec) * 2
        assert one.experts_hit == 2 and one.weight_bytes == pytest.approx(mem.weight_bytes - unread)
    else:
        assert one.weight_bytes == mem.weight_bytes
    req = PlanRequest(
        model=model, gpus=(l4,), rps=1.0, traffic=Traffic(rate=1.0, num_requests=20, input_len=32, output_len=8),
        slos=(LatencySLO("ttft", 95, 1000),), quants=("bf16",), tps=(1,), max_batches=(8,),
    )  # fmt: skip
    result = predict(req, l4, 1, "bf16", 8)
    assert not result.result.saturated and result.result.output_tokens > 0


def test_plan_capacity_cli_on_a_tiny_moe_config(tmp_path):
    save_tiny(tmp_path, "qwen3_moe")
    out = CliRunner().invoke(
        app,
        ["plan-capacity", "--model", str(tmp_path), "--gpu", "l4", "--predict", "--tp", "1", "--quant", "bf16",
         "--max-batch", "8", "--rps", "1", "--num-requests", "20", "--input-len", "32", "--output-len", "8"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
