"""Capacity layer 1: the catalogs and the memory arithmetic (issue 8's unit acceptance).

Pure Python and fast; the numbers in comments are worked by hand from the formulas in
core/capacity/memory.py.
"""

import json

import pytest

from llmtool.core.capacity.catalog import gpu, load_gpus, load_models, model_spec
from llmtool.core.capacity.memory import MemoryConfig, plan_memory, weight_bytes_per_gpu
from llmtool.core.errors import UsageError

KIB = 1024
GIB = 1024**3


def kv_bf16(name: str) -> float:
    return model_spec(name).kv_bytes_per_token(2)


def test_kv_bytes_per_token_bf16():
    # 2 x layers x kv_heads x head_dim x 2 bytes
    assert kv_bf16("Llama-3.1-8B") == 128 * KIB  # 2*32*8*128*2
    assert kv_bf16("Llama-2-7B") == 512 * KIB  # 2*32*32*128*2 (no GQA)
    assert kv_bf16("Llama-3.1-70B") == 320 * KIB  # 2*80*8*128*2
    assert kv_bf16("smollm2-135m") == 23040  # 2*30*3*64*2
    plan = plan_memory(model_spec("Llama-3.1-8B"), gpu("H100-SXM"), MemoryConfig(context_len=4096))
    assert plan.kv_bytes_per_token == 128 * KIB and plan.fits
    fp8 = plan_memory(model_spec("Llama-3.1-8B"), gpu("H100-SXM"), MemoryConfig(kv_dtype="fp8"))
    assert fp8.kv_bytes_per_token == 64 * KIB


def test_405b_on_one_80gb_gpu_does_not_fit_and_says_by_how_much():
    plan = plan_memory(model_spec("Llama-3.1-405B"), gpu("H100-SXM"), MemoryConfig(context_len=4096))
    assert not plan.fits and plan.max_num_seqs == 0 and plan.kv_capacity_tokens == 0
    # By hand:
    #   usable      = 80 GiB x 0.9                     = 77_309_411_328
    #   weights     = 405_853_388_800 params x 2 bytes = 811_706_777_600
    #   activations = 8192 tokens x 2 bytes x (4*16384 + 16384 + 2*1024 + 3*53248)
    #                 + 256 x 128256 x 4 (fp32 logits) = 3_992_977_408 + 131_334_144
    #   reserve     = 1 GiB
    #   one sequence's KV = 4096 x 516_096 (2*126*8*128*2) = 2_113_929_216
    needed = 811_706_777_600 + 3_992_977_408 + 131_334_144 + GIB + 2_113_929_216
    assert plan.usable_bytes == 77_309_411_328
    assert plan.weight_bytes == 811_706_777_600
    assert plan.shortfall_bytes == needed - 77_309_411_328 == 741_709_348_864
    assert plan.message == (
        "does not fit: needs 811.7 GB of weights per GPU, 77.3 GB available; with activations, "
        "reserve and one 4096-token sequence's KV cache it is short 741.7 GB"
    )


def test_shortfall_when_weights_fit_but_kv_does_not():
    # Llama-3.1-70B in fp8 on one H100: weights fit, a full 128K-token sequence does not.
    plan = plan_memory(model_spec("Llama-3.1-70B"), gpu("H100-SXM"), MemoryConfig(quant="fp8"))
    assert plan.weight_bytes < plan.usable_bytes and not plan.fits
    one_seq = 131072 * 320 * KIB
    assert plan.shortfall_bytes == one_seq - plan.kv_budget_bytes
    assert "for the KV cache; one 131072-token sequence needs" in plan.message
    # About 1.3 GB is left for KV (254 blocks = 4064 tokens): a 2K-token sequence fits.
    short = plan_memory(
        model_spec("Llama-3.1-70B"), gpu("H100-SXM"), MemoryConfig(quant="fp8", context_len=2048)
    )
    assert short.fits and short.shortfall_bytes == 0
    assert short.num_kv_blocks == short.kv_budget_bytes // (16 * 320 * KIB)
    assert short.max_num_seqs == short.num_kv_blocks // (2048 // 16) >= 1


def test_tp_shards_weights_about_a_quarter():
    model = model_spec("Llama-3.1-70B")
    tp1, tp4 = weight_bytes_per_gpu(model, "bf16", 1), weight_bytes_per_gpu(model, "bf16", 4)
    assert tp1 == model.params * 2 == 141_107_412_992
    # Only the norms are replicated: (2*80 + 1) x 8192 x 2 bytes on every GPU.
    norms = (2 * 80 + 1) * 8192 * 2
    assert tp4 == (tp1 - norms) // 4 + norms
    assert abs(tp4 / (tp1 / 4) - 1) < 1e-3


def test_quantization_shrinks_linear_weights_as_stated():
    model = model_spec("Llama-3.1-8B")
    embed = 2 * 128256 * 4096  # embeddings and lm_head stay bf16
    norms = (2 * 32 + 1) * 4096  # bf16
    linear = model.params - embed - norms  # 6_979_321_856 quantized weights
    assert linear == 6_979_321_856
    rest = 2 * (embed + norms)
    assert weight_bytes_per_gpu(model, "bf16", 1) == 2 * linear + rest
    assert weight_bytes_per_gpu(model, "fp8", 1) == linear + rest
    assert weight_bytes_per_gpu(model, "int8", 1) == linear + rest
    # int4: 4 bits + fp16 scale and 4-bit zero per 128 weights = 4.15625 bits = 0.51953125 bytes
    assert weight_bytes_per_gpu(model, "int4", 1) == -(-linear * 133 // 256) + rest
    # bf16 embeddings (1.05B of 8.03B params) keep int4 above a quarter of bf16: 5.73 / 16.06 GB
    assert weight_bytes_per_gpu(model, "int4", 1) == 5_727_854_592


def test_gqa_kv_heads_replicate_when_fewer_than_tp():
    model = model_spec("Llama-3.1-70B")  # 64 heads, 8 KV heads
    kv = {
        tp: plan_memory(model, gpu("H100-SXM"), MemoryConfig(tp=tp)).kv_bytes_per_token for tp in (1, 8, 16)
    }
    assert kv[1] == 320 * KIB
    assert kv[8] == 320 * KIB // 8  # one KV head per GPU
    assert kv[16] == kv[8]  # still one KV head per GPU: replicated, not halved
    # The replicated k/v weights are counted too: each GPU holds one head's k and v.
    # q, o, MLP and vocabulary split 16 ways; k and v hold one whole head; norms replicated.
    per_layer = 2 * 8192 * 8192 // 16 + 2 * 8192 * 128 + 3 * 8192 * 28672 // 16
    expected = 2 * (80 * per_layer + 2 * 128256 * 8192 // 16 + (2 * 80 + 1) * 8192)
    assert weight_bytes_per_gpu(model, "bf16", 16) == expected
    smol = model_spec("SmolLM2-135M")  # 9 heads, 3 KV heads
    assert plan_memory(smol, gpu("L4"), MemoryConfig(tp=9)).kv_bytes_per_token == 2 * 30 * 1 * 64 * 2


def test_invalid_tp_and_options_are_usage_errors():
    model = model_spec("Llama-3.1-8B")
    with pytest.raises(UsageError, match="attention heads"):
        plan_memory(model, gpu("H100-SXM"), MemoryConfig(tp=3))
    with pytest.raises(UsageError, match="KV heads"):
        plan_memory(model_spec("Qwen2.5-7B"), gpu("L4"), MemoryConfig(tp=7))  # 28 heads, 4 KV heads
    with pytest.raises(UsageError, match="unknown quantization 'int3'"):
        plan_memory(model, gpu("H100-SXM"), MemoryConfig(quant="int3"))


def test_gpu_catalog_entries_are_complete():
    gpus = load_gpus()
    expected = {
        "A10G",
        "L4",
        "L40S",
        "A100-40GB",
        "A100-80GB",
        "H100-SXM",
        "H100-PCIe",
        "H200",
        "B200",
        "MI300X",
    }
    assert set(gpus) == expected
    for spec in gpus.values():
        assert spec.source.strip()
        assert min(spec.memory_bytes, spec.hbm_bandwidth, spec.bf16_flops, spec.int8_ops) > 0
        assert spec.link_bandwidth > 0 and spec.price_per_hour > 0
        assert spec.fp8_flops is None or spec.fp8_flops >= spec.bf16_flops
    h100 = gpus["H100-SXM"]
    assert h100.memory_bytes == 80 * GIB and h100.hbm_bandwidth == 3.35e12
    assert h100.bf16_flops == 989e12 and h100.fp8_flops == 1979e12 and h100.link_bandwidth == 450e9
    assert gpus["A100-80GB"].fp8_flops is None


def test_model_catalog_entries_are_complete():
    models = load_models()
    assert len(models) == 18
    for spec in models.values():
        assert spec.source.startswith("https://huggingface.co/") and spec.hf_id in spec.source
        # loading checks the stated `params` against the count from the shape
        assert spec.num_heads % spec.num_kv_heads == 0
        assert min(spec.num_layers, spec.hidden_size, spec.head_dim, spec.vocab_size, spec.max_context) > 0
    mixtral = models["Mixtral-8x7B"]
    assert mixtral.is_moe and (mixtral.num_experts, mixtral.num_experts_per_tok) == (8, 2)
    assert not models["Llama-3.1-8B"].is_moe


def test_gpu_lookup_is_case_insensitive_and_unknown_lists_known():
    assert gpu("h100-sxm").name == "H100-SXM"
    with pytest.raises(UsageError) as e:
        gpu("h100-nvl")
    assert "unknown GPU 'h100-nvl'" in str(e.value)
    for name in load_gpus():
        assert name in str(e.value)


def test_gpu_spec_file_adds_and_overrides(tmp_path):
    extra = tmp_path / "mine.toml"
    extra.write_text(
        "[my-gpu]\nmemory_gib = 16\nhbm_bandwidth_tbps = 0.5\nbf16_tflops = 50\nlink_gbps = 16\n"
        "[h100-sxm]\nmemory_gib = 80\nhbm_bandwidth_tbps = 3.35\nbf16_tflops = 989\nfp8_tflops = 1979\n"
        'link_gbps = 450\nprice_per_hour = 2.0\nsource = "our contract"\n'
    )
    gpus = load_gpus(extra=extra)
    assert gpus["my-gpu"].memory_bytes == 16 * GIB and gpus["my-gpu"].source == str(extra)
    assert gpu("H100-SXM", extra=extra).price_per_hour == 2.0
    assert sum(k.lower() == "h100-sxm" for k in gpus) == 1
    bad = tmp_path / "bad.toml"
    bad.write_text("[x]\nmemory_gib = 16\n")
    with pytest.raises(UsageError, match="missing"):
        load_gpus(extra=bad)


LLAMA_31_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "tie_word_embeddings": False,
}


def shape(model) -> dict:
    """What planning reads from a model: its transformer shape, counts and KV arithmetic (rope,
    token ids and names may differ between a catalog entry and a full config.json)."""
    s = model.spec
    return {
        **s.dims(), "family": s.family, "moe": s.moe, "windows": s.windows, "qk_norm": s.qk_norm,
        "block": s.block, "qkv_bias": s.qkv_bias, "max_context": model.max_context,
        "params": model.params, "active": model.active_params, "kv": model.kv_bytes_per_token(2, 8192),
    }  # fmt: skip


def test_model_spec_from_hf_config_matches_catalog(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_31_8B_CONFIG))
    from_dir = model_spec(str(tmp_path))
    assert shape(from_dir) == shape(model_spec("Llama-3.1-8B"))
    assert shape(model_spec(str(tmp_path / "config.json"))) == shape(from_dir)


def test_model_spec_from_mixtral_config_matches_catalog(tmp_path):
    config = {
        **LLAMA_31_8B_CONFIG,
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": 32000,
        "max_position_embeddings": 32768,
        "rope_theta": 1e6,
        "rope_scaling": None,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert shape(model_spec(str(tmp_path))) == shape(model_spec("Mixtral-8x7B"))


def test_model_spec_names_aliases_and_unknowns():
    assert model_spec("llama-3.1-70b").name == "Llama-3.1-70B"
    assert model_spec("meta-llama/Llama-3.1-8B").name == "Llama-3.1-8B"  # the HF id
    smol = model_spec("smollm2-135m")  # the default alias
    assert (smol.num_layers, smol.num_kv_heads, smol.head_dim) == (30, 3, 64)
    with pytest.raises(UsageError, match="known models are Llama-2-7B"):
        model_spec("gpt-5")


@pytest.mark.real_model
def test_default_alias_gguf_matches_catalog(reference):
    # The shipped GGUF is the Instruct model: same shape as the SmolLM2-135M catalog entry.
    assert shape(model_spec(str(reference))) == shape(model_spec("SmolLM2-135M"))
