"""PackedLinear (oneDNN-packed bf16 weights on CPU) against F.linear, and a model prepared for
inference (fused q/k/v and gate/up, packed) against the same model unprepared."""

import pytest
import torch

from llmtool.core.models.context import PrefillContext
from llmtool.core.models.loader import load_model
from llmtool.kernels.linear import PackedLinear, can_pack, linear_ref

from .conftest import _save_tiny


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows", [1, 7, 32, 129])
def test_packed_linear_equals_f_linear(dtype, rows):
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(320, 96, generator=g).to(dtype)
    b = torch.randn(320, generator=g).to(dtype)
    layer = PackedLinear(w, b)
    assert layer.packed == (dtype == torch.bfloat16 and can_pack(w))
    x = torch.randn(rows, 192, generator=g).to(dtype)[:, ::2]  # strided rows, as after a split
    assert torch.equal(layer(x), linear_ref(x, w, b))
    assert torch.equal(PackedLinear(w)(x.reshape(1, rows, 96)), linear_ref(x, w).reshape(1, rows, -1))


def test_packing_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("LLMTOOL_CPU_KERNELS", "0")
    assert not PackedLinear(torch.randn(8, 8, dtype=torch.bfloat16)).packed


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_prepared_model_gives_the_same_logits(tmp_path, dtype):
    _save_tiny(tmp_path, "qwen2", tie_word_embeddings=True)  # biases on q/k/v: the fused bias path
    loaded = load_model(str(tmp_path), dtype=dtype, device="cpu", with_tokenizer=False)
    ids = torch.tensor([5, 9, 33, 2, 17, 101, 7])
    pos = torch.arange(len(ids))
    with torch.no_grad():
        before = loaded.model.compute_logits(loaded.model(ids, pos, PrefillContext([len(ids)], loaded.spec)))
        after = loaded.model.prepare_for_inference()
        assert after.prepare_for_inference() is after  # idempotent
        fused = after.compute_logits(after(ids, pos, PrefillContext([len(ids)], loaded.spec)))
    # One product instead of three changes no arithmetic per output column.
    torch.testing.assert_close(fused, before, rtol=0, atol=1e-5 if dtype == "fp32" else 0)
    assert not hasattr(after.model.layers[0].self_attn, "q_proj")
