"""Tests for learnq.bn_fold: hand-computed folds, every registered model with BN, what is left alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from learnq.bn_fold import find_conv_bn_pairs, fold_batchnorm, folded_weights
from learnq.errors import ModelError
from learnq.pipeline.models import MODELS, build_model

SMALL: dict[str, dict] = {
    "thesis-imagenette": {"width": 8},
    "resnet20": {"width_mult": 0.5},
    "mobilenetv2-small": {"width_mult": 0.5},
}
TYPICAL = {
    "mlp": (1, 8, 8),
    "thesis-mnist": (1, 28, 28),
    "thesis-cifar": (3, 32, 32),
    "lenet": (1, 28, 28),
    "resnet20": (3, 32, 32),
    "thesis-imagenette": (3, 64, 64),
    "mobilenetv2-small": (3, 32, 32),
}
# every image model (the text models have no BatchNorm: tests/test_models_transformer.py)
CASES = [(name, SMALL.get(name, {})) for name in sorted(MODELS) if name in TYPICAL]
CASES += [("thesis-cifar", {"batchnorm": True})]


def _one_channel(bias: bool) -> nn.Sequential:
    conv = nn.Conv2d(1, 1, kernel_size=1, bias=bias)
    bn = nn.BatchNorm2d(1, eps=0.0)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        if bias:
            conv.bias.fill_(0.5)
        bn.weight.fill_(3.0)
        bn.bias.fill_(1.0)
        bn.running_mean.fill_(0.25)
        bn.running_var.fill_(4.0)
    return nn.Sequential(conv, bn).eval()


def test_hand_computed_one_channel_fold():
    # y = 3 * (2x + 0.5 - 0.25) / sqrt(4) + 1 = 3x + 1.375: scale 1.5, W' = 2 * 1.5, b' = 1.5 * (0.5 - 0.25) + 1
    model = _one_channel(bias=True)
    folded = fold_batchnorm(model)
    assert folded[0].weight.item() == 3.0 and folded[0].bias.item() == 1.375
    assert isinstance(folded[1], nn.Identity)
    x = torch.tensor([-1.0, 0.0, 0.5, 2.0]).reshape(4, 1, 1, 1)
    assert torch.equal(folded(x), 3 * x + 1.375)
    assert torch.equal(model(x), 3 * x + 1.375)  # the original is untouched (inplace=False)
    assert isinstance(model[1], nn.BatchNorm2d) and model[0].weight.item() == 2.0


def test_layer_without_bias_gets_one():
    folded = fold_batchnorm(_one_channel(bias=False))
    # b' = 1.5 * (0 - 0.25) + 1 = 0.625
    assert isinstance(folded[0].bias, nn.Parameter) and folded[0].bias.item() == 0.625
    assert folded[0].weight.item() == 3.0
    assert [name for name, _ in folded[0].named_parameters()] == ["weight", "bias"]


def test_folded_weights_linear_rows_and_affine_free_bn():
    torch.manual_seed(0)
    linear = nn.Linear(3, 2).double()
    bn = nn.BatchNorm1d(2, affine=False).double().eval()
    bn.running_mean.copy_(torch.tensor([0.5, -1.0]))
    bn.running_var.copy_(torch.tensor([0.25, 9.0]))
    w, b = folded_weights(linear.weight, linear.bias, bn)
    s = 1 / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(w, linear.weight * s[:, None], rtol=0, atol=1e-15)
    torch.testing.assert_close(b, s * (linear.bias - bn.running_mean), rtol=0, atol=1e-15)
    model = nn.Sequential(linear, bn).eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(fold_batchnorm(model)(x), model(x), rtol=0, atol=1e-12)


def _has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in model.modules())


def _with_running_stats(name: str, kwargs: dict, dtype: torch.dtype, shape: tuple[int, ...]) -> nn.Module:
    """A model whose BNs have non-trivial gamma/beta and running stats from a few training-mode passes."""
    torch.manual_seed(0)
    model = build_model(name, shape, 10, **kwargs).to(dtype)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.momentum = None  # cumulative average: running stats are the mean over the passes
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0.0, 0.2)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, *shape, dtype=dtype))
    return model.eval()


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[f"{n}{'-bn' if k.get('batchnorm') else ''}" for n, k in CASES])
def test_every_registered_model_folds_to_the_same_eval_output(name, kwargs):
    model = _with_running_stats(name, kwargs, torch.float32, TYPICAL[name])
    n_bn = sum(isinstance(m, _BatchNorm) for m in model.modules())
    pairs = find_conv_bn_pairs(model)
    assert len(pairs) == n_bn  # the zoo is built so that every BN follows its conv directly
    folded = fold_batchnorm(model)
    assert not _has_bn(folded)
    assert all(isinstance(folded.get_submodule(bn), nn.Identity) for _, bn in pairs)
    assert all(folded.get_submodule(layer).bias is not None for layer, _ in pairs)
    x = torch.randn(4, *TYPICAL[name])
    with torch.no_grad():
        expected, got = model(x), folded(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    if n_bn:
        assert not torch.equal(folded.get_submodule(pairs[0][0]).weight, model.get_submodule(pairs[0][0]).weight)
        assert find_conv_bn_pairs(folded) == []  # nothing left to fold


@pytest.mark.parametrize("name", ["resnet20", "thesis-imagenette", "mobilenetv2-small"])
def test_fold_is_exact_in_float64(name):
    shape = (3, 16, 16)  # float64 convolutions are slow on CPU: a small input
    model = _with_running_stats(name, SMALL.get(name, {}), torch.float64, shape)
    x = torch.randn(3, *shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(model)(x), model(x), rtol=0, atol=1e-10)


def test_pair_names_follow_the_module_tree():
    pairs = find_conv_bn_pairs(build_model("resnet20", (3, 32, 32), 10))
    assert pairs[0] == ("stem.conv", "stem.bn")
    assert ("layer1.0.conv1", "layer1.0.bn1") in pairs
    assert ("layer2.0.shortcut.conv", "layer2.0.shortcut.bn") in pairs
    assert ("layer1.0.shortcut.conv", "layer1.0.shortcut.bn") not in pairs  # identity shortcut there


class _BnAfterRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.relu(self.conv(x)))


class _ConvOutputUsedTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _SharedConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn1(self.conv(x)) + self.bn2(self.conv(x))


@pytest.mark.parametrize(
    "factory",
    [
        _BnAfterRelu,
        _ConvOutputUsedTwice,
        _SharedConv,
        lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)),
    ],
    ids=["bn-after-relu", "conv-output-used-twice", "shared-conv", "no-running-stats"],
)
def test_unfoldable_batchnorms_are_left_alone(factory):
    torch.manual_seed(0)
    model = factory().eval()
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.running_mean is not None:
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    assert find_conv_bn_pairs(model) == []
    folded = fold_batchnorm(model)
    assert sum(isinstance(m, _BatchNorm) for m in folded.modules()) == sum(
        isinstance(m, _BatchNorm) for m in model.modules()
    )
    x = torch.randn(2, 2 if isinstance(model, (_BnAfterRelu, nn.Sequential)) else 4, 6, 6)
    assert torch.equal(folded(x), model(x))


def test_training_mode_batchnorm_is_refused_before_anything_changes():
    model = _one_channel(bias=True).train()
    with pytest.raises(ModelError, match=r"training mode.*model\.eval\(\)"):
        fold_batchnorm(model, inplace=True)
    assert isinstance(model[1], nn.BatchNorm2d) and model[0].weight.item() == 2.0


class _Identity(nn.Module):
    def forward(self, w):
        return w


def test_parametrized_layer_is_refused():
    model = _one_channel(bias=True)
    parametrize.register_parametrization(model[0], "weight", _Identity())
    with pytest.raises(ModelError, match="parametrized.*fold BatchNorm first"):
        fold_batchnorm(model)


def test_inplace_returns_the_same_model():
    model = _one_channel(bias=True)
    assert fold_batchnorm(model, inplace=True) is model
    assert isinstance(model[1], nn.Identity) and model[0].weight.item() == 3.0


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx can't trace it, so pairs come from the Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())
        self.head = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        y = self.body(x)
        return self.head(y) if y.sum() > 0 else -y


def test_untraceable_model_falls_back_to_sequential_children_with_a_warning():
    torch.manual_seed(0)
    model = _Untraceable().eval()
    model.body[1].running_mean.uniform_(-1, 1)
    model.body[1].running_var.uniform_(0.5, 2)
    with pytest.warns(UserWarning, match="could not trace"):
        assert find_conv_bn_pairs(model) == [("body.0", "body.1")]
    with pytest.warns(UserWarning, match="could not trace"):
        folded = fold_batchnorm(model)
    assert isinstance(folded.body[1], nn.Identity)
    x = torch.randn(2, 1, 5, 5)
    torch.testing.assert_close(folded(x), model(x), rtol=0, atol=1e-6)
