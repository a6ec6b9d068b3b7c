"""Every registered method gets the same round trip, by registry (issue 11): each QAT method of
``learnq.quantizers.QAT_METHODS`` and each PTQ method of ``learnq.ptq.registry.PTQ_METHODS`` quantizes a small conv
net, the model file written from it loads into a fresh network that computes the same outputs bit for bit, and the
ONNX export (learnq.export) computes them too. A method added to a registry is tested here without a line of its own.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from fixture_models import ConvBN
from torch import nn

import learnq
from learnq.fields.ptq_config import KEY as PTQ_CONFIG_KEY
from learnq.ptq import PTQ, PTQ_METHODS, quantize
from learnq.quantized import quantized_parameters
from learnq.quantizers import QAT_METHODS

ONNX = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxruntime") is not None


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def _data(n: int = 32, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _reloaded(model: nn.Module, build, path) -> nn.Module:
    learnq.save(model, path)
    torch.manual_seed(123)  # other initial weights: the file must replace them all
    return learnq.load(path, build()).eval()


def _onnx_rows_agree(model: nn.Module, x: torch.Tensor, path) -> float:
    """Fraction of samples whose ONNX output (onnxruntime, graph as written) is within 1e-4 of the model's."""
    from learnq.export import run_onnx, to_onnx

    to_onnx(model, x, path, verify=False)
    with torch.no_grad():
        expected = model(x)
    got = run_onnx(path, x, optimize=False)
    return float(((got - expected).abs().amax(dim=1) <= 1e-4).float().mean())


@pytest.mark.parametrize("method", list(QAT_METHODS))
def test_every_qat_method_trains_saves_loads_freezes_and_exports(method, tmp_path):
    model = _conv_net()
    handle = learnq.prepare(model, QAT_METHODS[method]())
    x, y = _data()
    params, _ = handle.split_parameters()
    opt = torch.optim.Adam([{"params": params}, *handle.param_groups()], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        (F.cross_entropy(model(x), y) + handle.loss()).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        trained = model(x)
        loaded = _reloaded(model, _conv_net, tmp_path / "m.safetensors")
        assert torch.equal(loaded(x), trained)  # the same dequantized weights through the same kernels
        assert {name: qt.method for name, qt in quantized_parameters(loaded)} == {
            name: method for name in handle.quantizers}
        handle.freeze()
        assert torch.equal(model(x), trained)
    if ONNX:  # no activation quantizers here: the same values, summed in another order
        assert _onnx_rows_agree(loaded, x, tmp_path / "m.onnx") == 1.0


@pytest.mark.parametrize("method", list(PTQ_METHODS))
def test_every_ptq_method_quantizes_saves_loads_and_exports(method, tmp_path):
    torch.manual_seed(0)
    model = ConvBN()
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 1, 6, 6) * 2)  # BatchNorm statistics to fold
    model.eval()
    x, y = _data(64)
    info = PTQ_METHODS[method]
    config = PTQ(method=method, wbits=4, abits=8, skip_first_last=False, options=dict(info.quick))
    result = quantize(model, torch.utils.data.TensorDataset(x, y), config, progress=False)
    assert result.config == config and result.method == method
    with torch.no_grad():
        expected = result.model(x)
        loaded = _reloaded(result.model, ConvBN, tmp_path / "m.safetensors")
        assert torch.equal(loaded(x), expected)
    assert PTQ.from_dict(learnq.load(tmp_path / "m.safetensors").metadata[PTQ_CONFIG_KEY]) == config
    if ONNX:
        # 8-bit input quantizers after conv/linear sums: an activation within float32 rounding of a rounding boundary
        # may land on the neighbouring code in onnxruntime, which moves that one sample's outputs by a step
        assert _onnx_rows_agree(loaded, x[:32], tmp_path / "m.onnx") >= 0.9


def test_the_pipeline_derives_each_qat_method_from_its_config():
    """The recipe options, defaults and fixed/learned bits the pipeline used to list by hand, now read from the
    configs (learnq.quantizers.QATConfig.recipe_options / learns_bits)."""
    from learnq.pipeline.qat_variants import method_options
    from learnq.pipeline.registry import QAT_SECTIONS, VARIANTS
    from learnq.quantizers.nested import REFERENCE_SCALE

    assert {m: method_options(m) for m in ("diffq", "nested", "ste", "lsq")} == {
        "diffq": {"group_size": 8, "b_min": 2, "b_max": 15, "init_bits": 8.0, "noise": "gaussian", "penalty": 1e-3,
                  "size": "naive"},
        "nested": {"threshold": 1e-10, "init_scale": None, "init_bits": 8, "min_scale": REFERENCE_SCALE,
                   "max_bits": 16, "biases": True, "gamma_inverse": 0.0, "gamma_bins": 0.0, "gamma_deviation": 0.0},
        "ste": {"scheme": "affine", "entropy_weight": 0.0},
        "lsq": {"entropy_weight": 0.0},
    }
    for name, cls in QAT_METHODS.items():
        assert VARIANTS[name].learned_bits == cls.learns_bits and name in QAT_SECTIONS
        assert set(method_options(name)) <= set(VARIANTS[name].options)
    fixed_bits = ["ste", "lsq", "dkm", "dorefa", "quant_noise", "ipq", "ipq_layerwise"]
    assert [m for m, c in QAT_METHODS.items() if not c.learns_bits] == fixed_bits
