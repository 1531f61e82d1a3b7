"""plan-capacity's counting on the real catalog shapes: sliding-window KV (Gemma 3, Mistral),
MoE memory (all experts) against decode bandwidth (routed experts), and a quick plan for every
catalog entry. The arithmetic is written out so a reader can check it by hand."""

import pytest

from llmtool.core.capacity.catalog import gpu, load_models, model_spec
from llmtool.core.capacity.memory import MemoryConfig, plan_memory, weight_bytes_per_gpu
from llmtool.core.capacity.planner import PlanRequest, predict
from llmtool.core.capacity.slo import LatencySLO
from llmtool.core.capacity.step_time import StepBatch, step_time
from llmtool.core.capacity.traffic import Traffic
from llmtool.core.errors import UsageError
from llmtool.core.models import counts

NEW = ("Qwen3-8B", "Qwen3-32B", "Qwen3-30B-A3B", "Qwen3-235B-A22B", "Gemma-3-27B", "Phi-4", "Mixtral-8x22B")


def test_gemma3_27b_kv_counts_only_the_window_on_local_layers():
    g = model_spec("Gemma-3-27B")
    # 62 layers, every 6th global (layers 5, 11, ..., 59): 10 global, 52 local on a 1024 window.
    windows = g.spec.windows
    assert len(windows) == 62 and windows.count(None) == 10 and windows.count(1024) == 52
    per_layer = 2 * 16 * 128 * 2  # K and V x 16 KV heads x head_dim 128 x bf16 = 8192 B per token
    assert g.kv_bytes_per_token(2) == 62 * per_layer == 507_904  # every layer holding every token
    # At 8k context a local layer holds 1024 of 8192 tokens: 10 + 52 x 1024/8192 = 16.5 layers' worth.
    assert g.kv_bytes_per_token(2, 8192) == per_layer * (10 + 52 * 1024 / 8192) == 135_168
    plan = plan_memory(g, gpu("H100-SXM"), MemoryConfig(context_len=8192, tp=2))
    assert plan.kv_bytes_per_token == 135_168 // 2  # 8 KV heads per GPU
    # Up to the window nothing is saved: at 1024 tokens every layer holds every token.
    assert g.kv_bytes_per_token(2, 1024) == 507_904
    # A decode step at 8192 cached tokens reads 10 x 8192 + 52 x 1024 tokens' K and V.
    t = step_time(g, gpu("H100-SXM"), "bf16", 1, StepBatch.decoding(1, 8192))
    assert t.kv_read_bytes == per_layer * (10 * 8192 + 52 * 1024)
    assert t.kv_write_bytes == 62 * per_layer  # the new token is written to every layer


def test_mistral_7b_window_caps_kv_per_sequence():
    m = model_spec("Mistral-7B")  # sliding_window 4096 on all 32 layers
    per_layer = 2 * 8 * 128 * 2  # 4096 B
    assert m.kv_bytes_per_token(2) == 32 * per_layer == 131_072
    assert m.kv_bytes_per_token(2, 4096) == 131_072  # within the window: no saving
    # At 32k context each layer holds 4096 tokens: 32 x 4096 x 4096 B / 32768 tokens = 16 KiB per token.
    assert m.kv_bytes_per_token(2, 32768) == 32 * per_layer * 4096 / 32768 == 16_384
    plan = plan_memory(m, gpu("H100-SXM"), MemoryConfig(context_len=32768))
    assert plan.kv_bytes_per_token == 16_384
    # Mixtral-8x7B has no window: 32 x 4096 B at any context.
    assert model_spec("Mixtral-8x7B").kv_bytes_per_token(2, 32768) == 131_072


def test_windowed_attention_flops():
    # Keys seen by queries at positions c .. c+n-1 (query p sees min(W, p + 1)).
    assert counts.attended_keys(None, 10, 3) == 11 + 12 + 13
    assert counts.attended_keys(4, 0, 6) == 1 + 2 + 3 + 4 + 4 + 4
    assert counts.attended_keys(4, 2, 3) == 3 + 4 + 4
    assert counts.attended_keys(4, 100, 2) == 8
    g = model_spec("Gemma-3-27B").spec
    # One token at 8192 context: 2 x matmul weights + 4 x 32 heads x 128 x (10 x 8193 + 52 x 1024) keys.
    keys = 10 * 8193 + 52 * 1024
    assert counts.flops_per_token(g, 8192) == 2 * counts.matmul_params(g) + 4 * 32 * 128 * keys


def test_moe_memory_holds_all_experts_decode_reads_the_routed_ones():
    q = model_spec("Qwen3-30B-A3B")  # 48 layers, 128 experts of 3 x 2048 x 768, 8 per token
    assert q.params == 30_532_122_624 and q.active_params == 3_353_032_704
    expert = 3 * 2048 * 768
    assert q.params - q.active_params == 48 * (128 - 8) * expert
    h100 = gpu("H100-SXM")
    assert weight_bytes_per_gpu(q, "bf16", 1) == 2 * q.params  # memory: every expert
    one = step_time(q, h100, "bf16", 1, StepBatch.decoding(1, 1024))
    assert one.experts_hit == 8 and one.weight_bytes == pytest.approx(
        2 * q.active_params
    )  # bandwidth: 8 routed
    # A batch of B tokens touches E x (1 - (1 - k/E)^B) distinct experts per layer (uniform routing).
    b64 = step_time(q, h100, "bf16", 1, StepBatch.decoding(64, 1024))
    hit = 128 * (1 - (1 - 8 / 128) ** 64)
    assert b64.experts_hit == pytest.approx(hit) and 125 < hit < 126
    assert b64.weight_bytes == pytest.approx(2 * q.params - 48 * (128 - hit) * expert * 2)
    # Compute: only the top 8 experts' FLOPs, whatever is read.
    attn = 2 * 2048 * 32 * 128 + 2 * 2048 * 4 * 128
    assert one.linear_flops == 2 * 48 * (attn + 8 * expert)


def test_new_catalog_entries():
    models = load_models()
    expected = {  # total parameters counted from each config.json (all experts), and active ones
        "Qwen3-8B": (8_190_735_360, 8_190_735_360),
        "Qwen3-32B": (32_762_123_264, 32_762_123_264),
        "Qwen3-30B-A3B": (30_532_122_624, 3_353_032_704),
        "Qwen3-235B-A22B": (235_093_634_560, 22_190_763_520),
        "Gemma-3-27B": (27_009_346_304, 27_009_346_304),
        "Phi-4": (14_659_507_200, 14_659_507_200),
        "Mixtral-8x22B": (140_620_634_112, 39_152_031_744),
    }
    for name, (total, active) in expected.items():
        m = models[name]
        assert (m.params, m.active_params) == (total, active), name
        assert m.source == f"https://huggingface.co/{m.hf_id}/blob/main/config.json"
    assert models["Qwen3-8B"].spec.qk_norm == "head" and models["Gemma-3-27B"].spec.block == "sandwich"
    assert models["Phi-4"].spec.family == "phi3" and models["Mixtral-8x22B"].spec.moe.num_experts == 8


@pytest.mark.parametrize("name", NEW)
def test_quick_plan_on_new_catalog_entries(name):
    model = model_spec(name)
    h100 = gpu("H100-SXM")
    for tp in (1, 2, 4, 8):
        try:
            mem = plan_memory(model, h100, MemoryConfig(tp=tp, context_len=4096))
        except UsageError:  # TP does not divide the heads
            continue
        if mem.fits:
            break
    assert mem.fits, mem.message
    req = PlanRequest(
        model=model, gpus=(h100,), rps=1.0, traffic=Traffic(rate=1.0, num_requests=20, input_len=512, output_len=32),
        slos=(LatencySLO("ttft", 95, 5000),), quants=("bf16",), tps=(tp,), max_batches=(16,),
    )  # fmt: skip
    result = predict(req, h100, tp, "bf16", 16)
    assert not result.result.saturated and result.result.output_tokens > 0
