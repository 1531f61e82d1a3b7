"""The quantization algorithms on their own: the grid, RTN, GPTQ's solve (better than RTN on
correlated inputs, act-order, dead inputs, damping), AWQ's searches, and the staged layer
forward calibration runs (same numbers as the model's own forward)."""

import copy

import pytest
import torch

from llmtool.core.errors import LlmtoolError, UsageError
from llmtool.core.quant import layers
from llmtool.core.quant.awq import search_clip, search_scale
from llmtool.core.quant.config import QuantConfig
from llmtool.core.quant.gptq import Hessian, gptq_quantize
from llmtool.core.quant.grid import fake_quantize_grouped, grid_params, quantize_rtn


def correlated_inputs(n=4096, cols=256, rank=32, seed=0):
    """Activations as LLMs make them: low-rank structure, a few outlier channels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, rank, generator=g) @ torch.randn(rank, cols, generator=g) + 0.2 * torch.randn(
        n, cols, generator=g
    )
    x[:, :4] *= 10
    return x


def output_error(x, w, q) -> float:
    ref = x @ w.t()
    return float((x @ q.t() - ref).pow(2).sum() / ref.pow(2).sum())


@pytest.mark.parametrize("bits, group, sym", [(4, 64, True), (4, 64, False), (4, -1, True), (8, 32, True)])
def test_gptq_beats_rtn_on_every_layer(bits, group, sym):
    for seed in range(3):  # three "layers" with different weights and inputs
        x = correlated_inputs(seed=seed)
        w = 0.05 * torch.randn(384, 256, generator=torch.Generator().manual_seed(100 + seed))
        h = Hessian(256)
        h.add(x[:2048])
        h.add(x[2048:])  # accumulating in two calls equals one: the running mean
        assert torch.allclose(h.h, 2 * x.t() @ x / len(x), rtol=1e-4, atol=1e-3)
        rtn = quantize_rtn(w, bits, group, sym)
        gptq = gptq_quantize(w, h.h, bits=bits, group_size=group, sym=sym).weight
        e_rtn, e_gptq = output_error(x, w, rtn.dequantize()), output_error(x, w, gptq.dequantize())
        assert e_gptq < 0.5 * e_rtn, (seed, e_gptq, e_rtn)
        assert gptq.q.max() <= 2**bits - 1 and gptq.g_idx.tolist() == (rtn.g_idx.tolist())


def test_grid_sym_and_asym():
    w = torch.tensor([[-1.0, 0.5, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]])
    scale, zero = grid_params(w, 4, sym=True)
    assert zero.tolist() == [8.0, 8.0] and scale[0] == pytest.approx(2 / 15) and scale[1] == 1.0
    scale, zero = grid_params(torch.tensor([[0.5, 1.0, 2.0]]), 4, sym=False)  # all positive: range [0, 2]
    assert scale.item() == pytest.approx(2 / 15) and zero.item() == 0
    q = quantize_rtn(torch.randn(8, 64), 4, 32, sym=False)
    assert q.q.dtype == torch.uint8 and q.scales.shape == (2, 8) and q.zeros.shape == (2, 8)
    # Dequantization error is at most half a step per weight.
    w = torch.randn(16, 128)
    r = quantize_rtn(w, 4, 64, sym=False)
    step = r.scales.t().repeat_interleave(64, dim=1)
    assert torch.all((r.dequantize() - w).abs() <= step / 2 + 1e-6)


def test_act_order_static_and_dynamic_groups():
    x = correlated_inputs(cols=128)
    x[:, 100] *= 30  # the most active column, late in natural order
    w = 0.05 * torch.randn(64, 128)
    h = Hessian(128)
    h.add(x)
    static = gptq_quantize(w, h.h, bits=4, group_size=32, sym=True, desc_act=True, static_groups=True).weight
    assert static.g_idx.tolist() == [i // 32 for i in range(128)]
    dynamic = gptq_quantize(
        w, h.h, bits=4, group_size=32, sym=True, desc_act=True, static_groups=False
    ).weight
    order = torch.argsort(torch.diag(h.h), descending=True)
    assert int(dynamic.g_idx[100]) == 0 and int(order[0]) == 100  # the most active column opens group 0
    assert torch.bincount(dynamic.g_idx.long()).tolist() == [32] * 4
    rtn = output_error(x, w, quantize_rtn(w, 4, 32, True).dequantize())
    for q in (static, dynamic):
        assert output_error(x, w, q.dequantize()) < 0.5 * rtn


def test_dead_inputs_and_damping():
    x = correlated_inputs(n=64, cols=128)  # 64 tokens for 128 inputs: H is singular
    x[:, 7] = 0  # an input that never fires
    w = torch.randn(32, 128)
    h = Hessian(128)
    h.add(x)
    result = gptq_quantize(w, h.h, bits=4, group_size=32, sym=True, damp=1e-9)
    assert result.damp > 1e-9  # raised until Cholesky succeeded
    deq = result.weight.dequantize()
    assert torch.isfinite(deq).all() and deq[:, 7].abs().max() <= result.weight.scales.max()
    with pytest.raises(LlmtoolError):
        gptq_quantize(w, torch.full((128, 128), float("nan")), bits=4, group_size=32, sym=True)


def test_awq_scale_search_protects_salient_channels():
    x = correlated_inputs(cols=128)
    x[:, 5] *= 20  # one salient channel
    w = 0.05 * torch.randn(64, 128)
    config = QuantConfig(method="awq", bits=4, group_size=32)
    target = x @ w.t()

    def run(ws):
        return x @ ws[0].t()

    s = search_scale(x, [w], run, target, config)
    assert s[5] == s.max()  # the salient channel gets the largest scale
    scaled = fake_quantize_grouped(w * s, 4, 32, sym=False) / s
    plain = fake_quantize_grouped(w, 4, 32, sym=False)
    assert output_error(x, w, scaled) < output_error(x, w, plain)
    clipped = search_clip(w, x, config)
    assert torch.all(clipped.abs() <= w.abs() + 1e-7)
    q_clip = fake_quantize_grouped(clipped, 4, 32, sym=False)
    assert output_error(x, w, q_clip) <= output_error(x, w, plain) + 1e-9


def test_config_errors():
    with pytest.raises(UsageError, match="awq supports 4-bit"):
        QuantConfig(method="awq", bits=8)
    with pytest.raises(UsageError, match="unknown method"):
        QuantConfig(method="hqq")
    with pytest.raises(UsageError, match="GPTQ option"):
        QuantConfig(method="rtn", desc_act=True)
    config = QuantConfig(method="gptq", group_size=128)
    with pytest.raises(
        UsageError, match=r"group size 128 does not divide the input size 576 .* use 32, 64, -1"
    ):
        config.check_group_size(
            {"model.layers.0.self_attn.q_proj": 576, "model.layers.0.mlp.down_proj": 1536}
        )
    QuantConfig(method="gptq", group_size=64).check_group_size({"a": 576, "b": 1536})


def test_layer_runner_matches_the_model_forward(tiny_model):
    """Calibration runs the model's own layers: layer by layer over packed windows it gives
    the whole model's forward."""
    from llmtool.core.models.context import PrefillContext
    from llmtool.core.models.loader import load_model

    _, path, _ = tiny_model
    model = load_model(str(path), dtype=torch.float32, device="cpu", with_tokenizer=False).model
    windows = [list(range(3, 19)), list(range(40, 56))]
    runner = layers.LayerRunner(model, 2, 16, torch.float32)
    with torch.inference_mode():
        stream = runner.embed(windows)
        for i, layer in enumerate(model.model.layers):
            stream = runner.run(i, copy.deepcopy(layer), stream)
        ids = torch.tensor([t for w in windows for t in w])
        ref = model(ids, torch.arange(16).repeat(2), PrefillContext([16, 16], model.spec))
    torch.testing.assert_close(runner.final(stream), ref, rtol=1e-4, atol=1e-4)
