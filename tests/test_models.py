"""Tests for learnq.pipeline.models: every registered model's shapes, hand-computed parameter counts, specs, errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.fx
from torch import nn

from learnq.errors import ConfigError, ModelError
from learnq.pipeline.models import MODELS, ModelInfo, build_model, model_arguments, model_from_spec, model_spec

# Small settings so every model builds and runs in milliseconds.
SMALL: dict[str, dict] = {
    "thesis-imagenette": {"width": 8},
    "mobilenetv2-small": {"width_mult": 0.5},
    "resnet20": {"width_mult": 0.5},
}
SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar": (3, 32, 32), "imagenette": (3, 64, 64)}
STANDARD_LEAVES = (
    nn.Linear,
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Identity,
)


TEXT_MODELS = ("gpt", "encoder-classifier")  # token-id inputs: tests/test_models_transformer.py
IMAGE_MODELS = sorted(n for n in MODELS if n not in TEXT_MODELS)


def _build(name: str, shape: tuple[int, ...], classes: int = 10, **kwargs) -> nn.Module:
    return build_model(name, shape, classes, **{**SMALL.get(name, {}), **kwargs})


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_holds_the_nine_models_with_one_line_descriptions():
    assert set(MODELS) == {
        "mlp",
        "thesis-mnist",
        "thesis-cifar",
        "thesis-imagenette",
        "lenet",
        "resnet20",
        "mobilenetv2-small",
        *TEXT_MODELS,
    }
    for key, info in MODELS.items():
        assert isinstance(info, ModelInfo) and info.name == key
        assert info.description and "\n" not in info.description and len(info.description) <= 100
    with pytest.raises(dataclasses.FrozenInstanceError):
        MODELS["mlp"].name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("shape_name", sorted(SHAPES))
@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_forward_shape_on_typical_inputs(name, shape_name):
    shape = SHAPES[shape_name]
    torch.manual_seed(0)
    model = _build(name, shape, classes=7).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        y = model(x)
        again = model(x)
        first_alone = model(x[:1])
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()
    assert torch.equal(y, again)  # deterministic forward
    torch.testing.assert_close(first_alone, y[:1], rtol=1e-5, atol=1e-6)  # no mixing across the batch in eval


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_models_use_standard_layers_and_one_activation_module_per_site(name):
    model = _build(name, (3, 32, 32))
    all_modules = [m for _, m in model.named_modules(remove_duplicate=False)]
    assert len({id(m) for m in all_modules}) == len(all_modules)  # no module instance reused anywhere
    leaves = [m for m in model.modules() if not list(m.children())]
    assert all(isinstance(m, STANDARD_LEAVES) for m in leaves), {type(m).__name__ for m in leaves}
    graph = torch.fx.symbolic_trace(model).graph
    relu_fns = {torch.relu, nn.functional.relu, nn.functional.relu6, nn.functional.hardtanh}
    functional = [n for n in graph.nodes if n.op == "call_function" and n.target in relu_fns]
    methods = [n for n in graph.nodes if n.op == "call_method" and n.target in ("relu", "relu_", "clamp")]
    assert not functional and not methods
    act_calls = [
        n.target
        for n in graph.nodes
        if n.op == "call_module" and isinstance(model.get_submodule(n.target), (nn.ReLU, nn.ReLU6))
    ]
    assert act_calls and len(act_calls) == len(set(act_calls))  # each activation module called at one site
    n_act_modules = sum(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in model.modules())
    assert n_act_modules == len(act_calls)


def test_thesis_mnist_parameter_count_matches_hand_computation():
    model = build_model("thesis-mnist", (1, 28, 28), 10)
    # dense 784 -> 112 (weights + biases), dense 112 -> 10
    assert _n_params(model) == 784 * 112 + 112 + 112 * 10 + 10 == 89_050
    assert model.fc1.weight.shape == (112, 784) and model.fc2.weight.shape == (10, 112)
    assert round(4 * 89_050 / 1e6, 2) == 0.36  # float32 bytes: the thesis's 0.36 MB MNIST model
    assert _n_params(build_model("thesis-mnist", (1, 28, 28), 10, hidden=128)) == 784 * 128 + 128 + 128 * 10 + 10
    assert [type(m) for m in model.children()] == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]


def test_thesis_cifar_parameter_count_matches_hand_computation():
    convs = (3 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (64 * 64 * 9 + 64)
    dense = (64 * 4 * 4 * 192 + 192) + (192 * 10 + 10)  # 32x32 -> 4x4 after three 2x2 pools
    assert _n_params(build_model("thesis-cifar", (3, 32, 32), 10)) == convs + dense == 255_050
    # with BatchNorm the convs lose their bias and each BN has gamma and beta
    bn = _n_params(build_model("thesis-cifar", (3, 32, 32), 10, batchnorm=True))
    assert bn == convs + dense - (32 + 64 + 64) + 2 * (32 + 64 + 64)


def test_resnet20_and_lenet_parameter_counts_match_hand_computation():
    def conv(cin, cout, k):
        return cin * cout * k * k

    def bn(c):
        return 2 * c

    stem = conv(3, 16, 3) + bn(16)
    stage1 = 3 * (2 * conv(16, 16, 3) + 2 * bn(16))
    stage2 = conv(16, 32, 3) + conv(32, 32, 3) + 2 * bn(32) + conv(16, 32, 1) + bn(32)
    stage2 += 2 * (2 * conv(32, 32, 3) + 2 * bn(32))
    stage3 = conv(32, 64, 3) + conv(64, 64, 3) + 2 * bn(64) + conv(32, 64, 1) + bn(64)
    stage3 += 2 * (2 * conv(64, 64, 3) + 2 * bn(64))
    fc = 64 * 10 + 10
    assert _n_params(build_model("resnet20", (3, 32, 32), 10)) == stem + stage1 + stage2 + stage3 + fc == 272_474
    half = build_model("resnet20", (3, 32, 32), 10, width_mult=0.5)
    assert half.stem.conv.out_channels == 8 and half.fc.in_features == 32
    lenet = (1 * 6 * 25 + 6) + (6 * 16 * 25 + 16) + (16 * 5 * 5 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert _n_params(build_model("lenet", (1, 28, 28), 10)) == lenet
    # 8x8 digits: 8 -> 4 -> 2 after two pools, so the head sees 16 * 2 * 2 features
    assert build_model("lenet", (1, 8, 8), 10).classifier.fc1.in_features == 16 * 2 * 2


def test_thesis_imagenette_is_resnet18_layout_by_default_and_width_scales_it():
    full = build_model("thesis-imagenette", (3, 64, 64), 10, device="meta")  # no memory for 11M params
    assert _n_params(full) == 11_181_642  # torchvision ResNet-18 (11,689,512) with a 10-class head
    small = build_model("thesis-imagenette", (3, 64, 64), 10, width=8, blocks=[1, 1, 1, 1])
    assert [getattr(small, f"layer{k}")[0].conv1.out_channels for k in (1, 2, 3, 4)] == [8, 16, 32, 64]
    assert all(len(getattr(small, f"layer{k}")) == 1 for k in (1, 2, 3, 4))


def test_mobilenet_has_depthwise_convs_and_relu6():
    model = build_model("mobilenetv2-small", (3, 32, 32), 10)
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert any(isinstance(m, nn.ReLU6) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


def test_build_model_creates_parameters_on_the_device():
    model = build_model("resnet20", (3, 32, 32), 10, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    with pytest.raises(ConfigError, match="device"):
        build_model("mlp", (1, 8, 8), 10, device="no-such-device")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_spec_round_trip_rebuilds_the_same_network(name):
    shape = (64,) if name in TEXT_MODELS else (3, 32, 32)
    spec = model_spec(name, shape, 10, **SMALL.get(name, {}))
    assert set(spec) == {"name", "input_shape", "num_classes", "kwargs"}
    assert set(spec["kwargs"]) == set(model_arguments(name))  # defaults filled in
    loaded = json.loads(json.dumps(spec))
    assert loaded == spec
    torch.manual_seed(3)
    original = _build(name, shape)
    torch.manual_seed(3)
    rebuilt = model_from_spec(loaded)
    a, b = original.state_dict(), rebuilt.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same layers, same weights


def test_spec_holds_lists_and_defaults():
    spec = model_spec("lenet", (1, 28, 28), 10, hidden=(100, 50))
    assert spec == {
        "name": "lenet",
        "input_shape": [1, 28, 28],
        "num_classes": 10,
        "kwargs": {"channels": [6, 16], "hidden": [100, 50]},
    }
    assert model_from_spec(spec).classifier.fc2.weight.shape == (50, 100)


def test_unknown_model_lists_known_names():
    with pytest.raises(ConfigError, match="unknown model 'resnet50'") as err:
        build_model("resnet50", (3, 32, 32), 10)
    assert all(name in str(err.value) for name in MODELS)
    with pytest.raises(ConfigError, match="unknown model"):
        model_spec("nope", (1, 8, 8), 10)


def test_unknown_argument_names_the_argument_and_the_model():
    with pytest.raises(ConfigError, match=r"model 'resnet20' has no argument 'depth'.*width_mult"):
        build_model("resnet20", (3, 32, 32), 10, depth=56)
    with pytest.raises(ConfigError, match=r"'mlp' has no argument 'width'"):
        model_spec("mlp", (1, 8, 8), 10, width=3)


@pytest.mark.parametrize(
    ("name", "kwargs", "arg"),
    [
        ("mlp", {"hidden": (0,)}, "hidden"),
        ("mlp", {"hidden": "64"}, "hidden"),
        ("thesis-mnist", {"hidden": 1.5}, "hidden"),
        ("thesis-mnist", {"hidden": True}, "hidden"),
        ("thesis-cifar", {"channels": (32, 64)}, "channels"),
        ("thesis-cifar", {"batchnorm": "yes"}, "batchnorm"),
        ("thesis-imagenette", {"width": 0}, "width"),
        ("thesis-imagenette", {"blocks": (2, 2, 2)}, "blocks"),
        ("lenet", {"hidden": (120,)}, "hidden"),
        ("resnet20", {"width_mult": -1.0}, "width_mult"),
        ("resnet20", {"width_mult": float("nan")}, "width_mult"),
        ("mobilenetv2-small", {"stem_stride": 0}, "stem_stride"),
    ],
)
def test_invalid_argument_values_name_the_argument(name, kwargs, arg):
    with pytest.raises(ConfigError, match=f"model '{name}': argument '{arg}'"):
        build_model(name, (3, 32, 32), 10, **kwargs)


def test_bad_input_shapes_and_class_counts():
    with pytest.raises(ConfigError, match=r"input_shape must be \(C, H, W\)"):
        build_model("resnet20", (3072,), 10)
    with pytest.raises(ConfigError, match="positive ints"):
        build_model("mlp", (1, 0, 8), 10)
    with pytest.raises(ConfigError, match="input_shape"):
        build_model("mlp", "1x8x8", 10)
    with pytest.raises(ModelError, match="at least 4x4"):
        build_model("lenet", (1, 3, 8), 10)
    with pytest.raises(ModelError, match="at least 8x8"):
        build_model("thesis-cifar", (3, 4, 4), 10)
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("mlp", (1, 8, 8), 0)
    assert build_model("mlp", (64,), 10)(torch.zeros(2, 64)).shape == (2, 10)  # dense models take flat inputs


def test_model_from_spec_rejects_malformed_specs():
    good = model_spec("mlp", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="dict"):
        model_from_spec([good])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"missing \['kwargs'\]"):
        model_from_spec({k: v for k, v in good.items() if k != "kwargs"})
    with pytest.raises(ConfigError, match=r"unexpected \['version'\]"):
        model_from_spec({**good, "version": 2})
    with pytest.raises(ConfigError, match="'kwargs' must be a dict"):
        model_from_spec({**good, "kwargs": [64]})
    with pytest.raises(ConfigError, match="no argument 'bogus'"):
        model_from_spec({**good, "kwargs": {"bogus": 1}})
    with pytest.raises(ConfigError, match="JSON"):
        model_spec("mlp", (1, 8, 8), 10, hidden=(torch.tensor(3),))
