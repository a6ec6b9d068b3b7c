"""GPTQ (Frantar et al. 2023): the column update is the OBS formula, lazy batches change nothing, the Hessian of a
conv layer is its unfolded input's, and the layer output error is at most round-to-nearest's."""

from __future__ import annotations

import contextlib
import copy
import unittest.mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learnq.errors import ConfigError
from learnq.granularity import Granularity
from learnq.grid import GridSpec, compute_params
from learnq.ptq import quantize
from learnq.ptq.gptq import (
    gptq_matrix,
    gptq_weight,
    gptq_weights,
    input_columns,
    inverse_cholesky,
    layer_hessians,
    patch_rows,
)
from learnq.quantized import quantized_parameters


def _grid(w: torch.Tensor, step: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full_like(w, step), torch.zeros_like(w)


def test_two_columns_by_hand():
    # H = [[2, 1], [1, 2]], H⁻¹ = [[2, -1], [-1, 2]]/3; w = [0.3, 0.4] on the integer grid (step 1).
    # Column 0: q = 0, OBS moves column 1 by -(0.3 - 0)/(2/3) · (-1/3) = +0.15 -> 0.55, which rounds to 1.
    # Round-to-nearest gives [0, 0]: output error dᵀHd = 0.74 against GPTQ's 0.54.
    h = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    w = torch.tensor([[0.3, 0.4]], dtype=torch.float64)
    u = inverse_cholesky(h, damp=0.0)
    assert torch.allclose(u.T @ u, torch.linalg.inv(h), atol=1e-12)
    codes, errors, _, _ = gptq_matrix(w, u, GridSpec(bits=4), *_grid(w, 1.0))
    assert codes.tolist() == [[0.0, 1.0]]
    # e_0 = (w_0 - q_0)/U_00 with U_00 = sqrt([H⁻¹]_00) = sqrt(2/3)
    assert errors[0, 0].item() == pytest.approx(0.3 / (2 / 3) ** 0.5, rel=1e-12)
    for q, expected in ((codes[0], 0.54), (torch.zeros(2, dtype=torch.float64), 0.74)):
        d = q - w[0]
        assert float(d @ h @ d) == pytest.approx(expected, rel=1e-12)


def _obs_reference(w: torch.Tensor, h: torch.Tensor, step: float, spec: GridSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy OBS (GPTQ §2, Eq. 2) with explicit inverses of the remaining columns' Hessian, column by column."""
    qmin, qmax = spec.qrange()
    w = w.clone()
    codes, e_obs = torch.zeros_like(w), torch.zeros_like(w)
    for j in range(w.shape[1]):
        hinv = torch.linalg.inv(h[j:, j:])  # H_F⁻¹ over the columns not yet quantized
        q = torch.clamp(torch.round(w[:, j] / step), qmin, qmax)
        codes[:, j] = q
        e = (w[:, j] - q * step) / hinv[0, 0]
        e_obs[:, j] = e * hinv[0, 0] ** 0.5  # GPTQ's scaled error (w - q)/U_jj, U_jj = sqrt([H_F⁻¹]_jj)
        w[:, j:] -= e[:, None] * hinv[0, :][None, :]
    return codes, e_obs


def test_gptq_equals_sequential_obs_on_a_4x4_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 12, generator=g, dtype=torch.float64)
    h = 2 * x @ x.T / 12 + 0.05 * torch.eye(4, dtype=torch.float64)
    w = torch.randn(4, 4, generator=g, dtype=torch.float64)
    spec = GridSpec(bits=3)
    step = float(w.abs().max()) / 3
    expected_codes, expected_err = _obs_reference(w, h, step, spec)
    for block in (1, 2, 3, 4, 128):  # lazy batch updates give the same result
        codes, errors, _, _ = gptq_matrix(w, inverse_cholesky(h, 0.0), spec, *_grid(w, step), block_size=block)
        assert torch.equal(codes, expected_codes)
        # float64, a 4x4 system: the two routes differ by a few ulps
        torch.testing.assert_close(errors, expected_err, rtol=1e-10, atol=1e-12)
    assert not torch.equal(expected_codes, torch.clamp(torch.round(w / step), -4, 3))  # the update matters here


def test_input_columns_rebuild_the_conv_output():
    g = torch.Generator().manual_seed(1)
    layers = [nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.Conv2d(2, 3, (3, 2), stride=2, dilation=(1, 2),
                                                                  padding=(1, 0), padding_mode="reflect"),
              nn.Conv1d(3, 5, 3, padding=2), nn.Linear(7, 4)]
    inputs = [torch.randn(2, 4, 7, 7, generator=g), torch.randn(2, 2, 9, 8, generator=g),
              torch.randn(2, 3, 10, generator=g), torch.randn(2, 3, 7, generator=g)]
    for layer, x in zip(layers, inputs, strict=True):
        with torch.no_grad():
            expected = layer(x) - (0 if layer.bias is None else layer.bias.reshape(-1, *[1] * (x.ndim - 2))
                                   if not isinstance(layer, nn.Linear) else layer.bias)
        rows = input_columns(layer, x)
        groups = len(rows)
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        per = w.shape[0] // groups
        outs = [rows[k] @ w[k * per:(k + 1) * per].T for k in range(groups)]  # (N·L, out/groups)
        got = torch.cat(outs, dim=1)
        if isinstance(layer, nn.Linear):
            got = got.reshape(expected.shape)
        else:
            got = got.reshape(x.shape[0], -1, got.shape[1]).transpose(1, 2).reshape(expected.shape)
        # float32 sums of <= 27 products in another order than the conv kernel's
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _torch_gptq_matrix(w, u, spec, scale, offset, block_size):
    """The column loop as it was written in torch before it ran on numpy views (per-tensor/channel grids)."""
    w, codes, errors = w.clone(), torch.zeros_like(w), torch.zeros_like(w)
    qmin, qmax = spec.qrange()
    rnd = torch.floor if spec.rounding == "floor" else torch.round
    for i1 in range(0, w.shape[1], block_size):
        i2 = min(i1 + block_size, w.shape[1])
        # err is a view of errors, as in gptq_matrix: the lazy update's product then has the same operand strides,
        # and MKL (without MKL_CBWR) may pick another kernel, with another summation order, for other strides
        block, err, ub = w[:, i1:i2].clone(), errors[:, i1:i2], u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col, sc, off = block[:, i], scale[:, i1 + i], offset[:, i1 + i]
            q = rnd((col - off) / sc).clamp_(qmin, qmax)
            codes[:, i1 + i] = q
            e = (col - (q * sc + off)) / ub[i, i]
            block[:, i:] -= torch.outer(e, ub[i, i:])
            err[:, i] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return codes, errors


@pytest.mark.parametrize("spec", [GridSpec(bits=4), GridSpec(bits=3, scheme="affine", granularity="channel"),
                                  GridSpec(bits=2, scheme="unsigned", rounding="floor")], ids=str)
@pytest.mark.parametrize(("out", "cols", "block_size"), [(16, 150, 128), (120, 400, 128), (7, 61, 8)])
@pytest.mark.parametrize("numpy_loop", [True, False], ids=["numpy", "torch"])
def test_numpy_column_loop_equals_the_torch_loop_bit_for_bit(spec, out, cols, block_size, numpy_loop, monkeypatch):
    # the loop runs on numpy views of CPU tensors: float32 subtraction, division, multiplication, addition and
    # round-half-even are correctly rounded (IEEE 754) in numpy and torch alike, the outer product minus the block
    # is rounded before the subtraction in both (no fused multiply-add), and the lazy block update is the same torch
    # product on operands of the same strides: equal bit for bit;
    # the torch path (other devices) likewise
    g = torch.Generator().manual_seed(out + cols)
    x = torch.randn(2 * cols, cols, generator=g) + torch.randn(2 * cols, 1, generator=g)
    u = inverse_cholesky(2 * x.T @ x / x.shape[0], 0.01)
    w = torch.randn(out, cols, generator=g)
    scale = (0.1 + torch.rand(out, 1, generator=g)).expand(out, cols).contiguous()
    offset = (0.05 * torch.randn(out, 1, generator=g)).expand(out, cols).contiguous()
    import learnq.ptq.gptq as gptq_module

    monkeypatch.setattr(gptq_module, "_numpy_loop", lambda t: numpy_loop)  # False: the path of other devices
    codes, errors, _, _ = gptq_matrix(w, u, spec, scale, offset, block_size=block_size)
    ref_codes, ref_errors = _torch_gptq_matrix(w, u, spec, scale, offset, block_size)
    assert torch.equal(codes, ref_codes) and torch.equal(errors, ref_errors)
    assert (codes != torch.clamp(torch.round((w - offset) / scale), *spec.qrange())).any()  # the updates mattered


def test_patch_rows_are_f_unfold_patches_rearranged():
    # patch_rows builds the patches from a strided view; F.unfold (im2col) is the independent reference. Pure data
    # movement, no arithmetic: equal bit for bit. Strides, dilation, reflect padding, groups and Conv1d.
    g = torch.Generator().manual_seed(5)
    layers = [nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.Conv2d(2, 3, (3, 2), stride=2, dilation=(1, 2),
                                                                  padding=(1, 0), padding_mode="reflect"),
              nn.Conv2d(3, 2, (2, 3), stride=(1, 3), dilation=(2, 1)), nn.Conv1d(3, 5, 3, padding=2, dilation=2)]
    inputs = [torch.randn(2, 4, 7, 7, generator=g), torch.randn(3, 2, 9, 8, generator=g),
              torch.randn(2, 3, 8, 11, generator=g), torch.randn(2, 3, 10, generator=g)]
    for layer, x in zip(layers, inputs, strict=True):
        two = isinstance(layer, nn.Conv2d)
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        xp = F.pad(x, layer._reversed_padding_repeated_twice, mode=mode)
        xp = xp if two else xp.unsqueeze(-2)
        k, s, d = ((layer.kernel_size, layer.stride, layer.dilation) if two else
                   ((1, layer.kernel_size[0]), (1, layer.stride[0]), (1, layer.dilation[0])))
        cols = F.unfold(xp, k, dilation=d, stride=s)  # (N, C·kh·kw, L)
        expected = cols.transpose(0, 1).reshape(cols.shape[1], -1)  # (C·kh·kw, N·L): sample, then position
        assert torch.equal(patch_rows(layer, x), expected)


def test_conv_hessian_of_one_batch_against_float64():
    # H = 2 X Xᵀ / n of a LeNet-like conv input (post-ReLU, n = 64·196 patches): the float32 product of one batch
    # against the float64 one, relative to diag(H): float32 sums of 12,544 terms, relative error ~ sqrt(n)·6e-8.
    layer = nn.Conv2d(6, 16, 5, padding=2)
    x = torch.relu(torch.randn(64, 6, 14, 14, generator=torch.Generator().manual_seed(6)))
    (h,), n = layer_hessians(layer, x, batch_size=64)
    r = patch_rows(layer, x.double())
    ref = 2 * r @ r.T / n
    assert n == 64 * 14 * 14
    torch.testing.assert_close(h.double(), ref, rtol=0, atol=1e-5 * float(ref.diagonal().max()))


def _output_mse(layer: nn.Module, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref = layer(x)
        saved = layer.weight.detach().clone()
        layer.weight.copy_(w_hat)
        out = layer(x)
        layer.weight.copy_(saved)
    return float((out - ref).pow(2).mean())


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group:9"])
@pytest.mark.parametrize("act_order", [False, True])
def test_conv_output_error_at_most_nearest_and_equal_to_the_reported_one(granularity, act_order):
    torch.manual_seed(2)
    layer = nn.Conv2d(4, 6, 3, padding=1, groups=2)  # 2·3·3 = 18 columns per group matrix
    x = torch.randn(64, 4, 6, 6) + 0.5 * torch.randn(64, 4, 1, 1)  # correlated inputs: GPTQ has work to do
    spec = GridSpec(bits=3, granularity=Granularity.parse(granularity))
    hessians, _ = layer_hessians(layer, x)
    qt, info = gptq_weight(layer.weight.detach(), hessians, spec, damp=0.0, act_order=act_order)
    assert str(qt.granularity) == str(spec.granularity) and qt.method == "gptq"
    qmin, qmax = spec.qrange()
    assert int(qt.codes.min()) >= qmin and int(qt.codes.max()) <= qmax
    w = layer.weight.detach()
    gptq_mse = _output_mse(layer, qt.dequantize(), x)
    # info's errors are computed from H, per output value: the same number as the real outputs (float32 sums)
    assert info.gptq_error == pytest.approx(gptq_mse, rel=1e-3)
    if granularity != "group:9":  # a group grid's steps are GPTQ's own; nearest here is on the float weight's
        p = compute_params(w, spec)
        g = spec.granularity
        nearest = torch.clamp(torch.round(w / g.expand(p.scale, w.shape)), qmin, qmax) * g.expand(p.scale, w.shape)
        nearest_mse = _output_mse(layer, nearest, x)
        assert info.nearest_error == pytest.approx(nearest_mse, rel=1e-3)
        assert gptq_mse < nearest_mse
    else:
        assert info.gptq_error < info.nearest_error


def test_group_grid_needs_whole_column_groups():
    layer = nn.Linear(10, 3)
    hessians, _ = layer_hessians(layer, torch.randn(8, 10))
    with pytest.raises(ConfigError, match="group:4"):
        gptq_weight(layer.weight.detach(), hessians, GridSpec(bits=4, granularity=Granularity.parse("group:4")))
    with pytest.raises(ConfigError, match="axis:1"):
        gptq_weight(layer.weight.detach(), hessians, GridSpec(bits=4, granularity=Granularity.parse("column")))


def test_dead_inputs_are_rounded_to_nearest():
    layer = nn.Linear(4, 2)
    x = torch.randn(32, 4)
    x[:, 2] = 0.0  # column 2 never sees a signal: H_22 = 0
    hessians, _ = layer_hessians(layer, x)
    spec = GridSpec(bits=3)
    qt, _ = gptq_weight(layer.weight.detach(), hessians, spec, damp=0.01)
    p = compute_params(layer.weight.detach(), spec)
    assert torch.equal(qt.codes[:, 2], torch.round(layer.weight.detach()[:, 2] / p.scale).to(torch.int32))


def _model() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 8), nn.ReLU(),
                         nn.Linear(8, 3))


def test_quantize_gptq_beats_nearest_on_every_layer_and_composes():
    model = _model()
    x = torch.randn(96, 2, 5, 5)
    result = quantize(model, x, method="gptq", wbits=3, abits=8, progress=False)
    infos = result.extra["gptq"]
    assert [i["name"] for i in infos] == ["0.weight", "3.weight", "5.weight"]
    assert all(i["gptq_error"] <= i["nearest_error"] for i in infos)
    assert {name: qt.method for name, qt in quantized_parameters(result.model)} == {
        "0.weight": "gptq", "3.weight": "gptq", "5.weight": "gptq"}
    assert result.model[3].input_quantizer.enabled  # activation quantizers after the weights
    # bias correction: every output channel's mean equals the float one's
    bc = quantize(model, x, method="gptq", wbits=3, abits=32, bias_correction=True, progress=False)
    for name, module in (("0", model[0]), ("3", model[3])):
        w_hat = dict(quantized_parameters(bc.model))[f"{name}.weight"].dequantize()
        w = module.weight.detach()
        # float32 means of <= 100 values
        torch.testing.assert_close(w_hat.reshape(w.shape[0], -1).mean(1), w.reshape(w.shape[0], -1).mean(1),
                                   rtol=0, atol=1e-6)


def test_float_inputs_mode_and_errors():
    model = _model()
    x = torch.randn(16, 2, 5, 5)
    spec = GridSpec(bits=4)
    infos = gptq_weights(model, x, spec, inputs="float")
    assert len(infos) == 3
    with pytest.raises(ConfigError, match="inputs"):
        gptq_weights(_model(), x, spec, inputs="both")
    with pytest.raises(ConfigError, match="damp"):
        quantize(_model(), x, method="gptq", wbits=4, damp=-1.0, progress=False)


def test_hessian_is_twice_the_input_covariance():
    layer = nn.Linear(3, 2)
    x = torch.randn(5, 4, 3)  # (batch, tokens, features): every token is a column
    hessians, n = layer_hessians(layer, x, batch_size=2)
    rows = x.reshape(-1, 3)
    assert n == 20
    torch.testing.assert_close(hessians[0], 2 * rows.T @ rows / 20, rtol=1e-5, atol=1e-6)  # batched float32 sums
    assert F.linear(rows, layer.weight).shape == (20, 2)


def test_group_grid_model_saves_and_loads_bit_exact(tmp_path):
    import learnq

    model = _model()
    x = torch.randn(32, 2, 5, 5)
    result = quantize(model, x, method="gptq", wbits=3, abits=32, granularity="group:4", act_order=True,
                      skip_first_last=True, progress=False)
    qt = dict(quantized_parameters(result.model))["3.weight"]
    assert str(qt.granularity) == "group:4" and qt.scale.numel() == 8 * 100 // 4
    learnq.save(result.model, tmp_path / "g.safetensors")
    fresh = learnq.load(tmp_path / "g.safetensors", _model()).eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), result.model(x))  # same kernels, same shapes: the file computes the same


def test_conv_hessian_sum_equals_unfolded_rows_grouped_and_batched():
    layer = nn.Conv2d(4, 6, 3, padding=1, stride=2, groups=2)
    x = torch.randn(7, 4, 6, 6)
    hessians, n = layer_hessians(layer, x, batch_size=3)  # batches of 3, 3, 1: sums in float64 across batches
    rows = input_columns(layer, x.double())
    assert n == 7 * 3 * 3 and len(hessians) == 2
    for h, r in zip(hessians, rows, strict=True):
        # each batch's product in float32 (<= 27 terms of values ~N(0,1)): relative error ~1e-6
        torch.testing.assert_close(h.double(), 2 * r.T @ r / n, rtol=1e-5, atol=1e-5)


def test_gptq_streams_the_inputs_its_quantizers_would_see_in_a_calibration_pass():
    from learnq.act import calibrate
    from learnq.act.input_quant import input_quantizers

    torch.manual_seed(4)
    model = _model()
    x = torch.randn(300, 2, 5, 5)  # two batches of 256 and 44
    result = quantize(model, x, method="gptq", wbits=3, abits=4, seed=5, progress=False)
    streamed = input_quantizers(result.model)
    assert list(streamed) == ["0", "3", "5"]
    reference = copy.deepcopy(result.model)
    refs = input_quantizers(reference)
    for q in refs.values():
        q.reset_stats()
        q.enabled = False
    calibrate(reference, x, batch_size=256)  # the pass the GPTQ method skips: the finished model's inputs
    for name, q in refs.items():
        q.finish_calibration("mse")
        # same kernels on the same batches: the observed samples and the chosen α are bit for bit the same
        assert torch.equal(q.sample, streamed[name].sample) and q.count == streamed[name].count > 0
        assert torch.equal(q.alpha, streamed[name].alpha)


def test_gram_is_symmetric_close_to_float64_and_holds_blas_to_torch_threads():
    from learnq.ptq import gptq as gptq_module

    g = torch.Generator().manual_seed(3)
    a = torch.randn(150, 4000, generator=g).relu()  # conv2-like patch rows (non-negative after ReLU)
    h = gptq_module._gram(a)
    assert h.dtype == torch.float32 and torch.equal(h, h.T)  # syrk fills one triangle, numpy mirrors it
    # 4,000 float32 products per entry, values ~0.3 on average: relative error well under 1e-5
    torch.testing.assert_close(h.double(), a.double() @ a.double().T, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(gptq_module._gram(a[:, :7].T), a[:, :7].T @ a[:, :7], rtol=1e-5, atol=1e-5)
    seen = []

    class Spy:  # the BLAS pool is limited to torch's thread count for the product
        def limit(self, limits, user_api):
            seen.append((limits, user_api))
            return contextlib.nullcontext()

    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with unittest.mock.patch.object(gptq_module, "_blas_threads", lambda: Spy()):
            gptq_module._gram(a)
    finally:
        torch.set_num_threads(old)
    assert seen == [(1, "blas")]
