"""The leaf rules of the torch.fx traces that BatchNorm folding, cross-layer equalization, the calibration loss's
float prefix and GPTQ's paused forward take (all on :class:`learnq.fx_trace.LeafTracer`): which modules stay one
``call_module`` node. torch.fx alone keeps only ``torch.nn``'s own classes; these pin the rules on user subclasses
(and a user block), where a trace through the module would find no layer, no pair, or another graph."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from learnq.bn_fold import find_conv_bn_pairs, fold_batchnorm
from learnq.fx_trace import LeafTracer
from learnq.ptq.adaround import capture_inputs
from learnq.ptq.calib_loss import split_float_prefix
from learnq.ptq.equalize import Pair, find_pairs
from learnq.ptq.layer_inputs import LayerInputs


class MyConv(nn.Conv2d):
    """A user subclass: its module is this test file, so torch.fx would trace through it (to F.conv2d)."""


class MyLinear(nn.Linear):
    pass


class MyBN(nn.BatchNorm2d):
    pass


class Block(nn.Module):
    """A user block (not a layer): traced through unless named a leaf."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(x)) * 2


def _ops(graph: torch.fx.Graph) -> list[tuple[str, str]]:
    return [(n.op, str(n.target) if n.op != "call_function" else n.target.__name__) for n in graph.nodes]


def test_leaf_tracer_keeps_what_the_predicate_names_and_torch_nn():
    model = nn.Sequential(MyLinear(4, 6), nn.ReLU(), Block())
    plain = LeafTracer(lambda m: False).trace(model)
    assert ("call_module", "0") not in _ops(plain)  # the subclass is traced through
    assert ("call_module", "2.fc") in _ops(plain) and ("call_module", "1") in _ops(plain)
    kept = LeafTracer(lambda m: isinstance(m, (nn.Linear, Block))).trace(model)
    assert _ops(kept) == [("placeholder", "input"), ("call_module", "0"), ("call_module", "1"),
                          ("call_module", "2"), ("output", "output")]


def test_bn_fold_pairs_user_subclasses_of_layers_and_batchnorms():
    torch.manual_seed(0)
    model = nn.Sequential(MyConv(2, 3, 3), MyBN(3), nn.ReLU(), nn.Flatten(), MyLinear(3 * 4 * 4, 5),
                          nn.BatchNorm1d(5)).eval()
    for bn in (model[1], model[5]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # found by the trace, not by the fallback over nn.Sequential's children
        assert find_conv_bn_pairs(model) == [("0", "1"), ("4", "5")]
    x = torch.randn(7, 2, 6, 6)
    with torch.no_grad():
        want = model(x)
        folded = fold_batchnorm(model)
        # folding reassociates the affine map: float32 rounding of a few products per output (|y| < 10) < 1e-5
        torch.testing.assert_close(folded(x), want, rtol=1e-5, atol=1e-5)
    assert isinstance(folded[1], nn.Identity) and isinstance(folded[5], nn.Identity)


def test_equalize_pairs_user_subclasses_of_layers():
    model = nn.Sequential(MyConv(2, 4, 3), nn.ReLU(), MyConv(4, 3, 3), nn.ReLU6(), nn.Flatten(), MyLinear(3 * 2 * 2, 5))
    assert find_pairs(model) == [Pair("0", "2", "relu", False, False), Pair("2", "5", "relu6", False, True)]


class _WithBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = MyLinear(4, 6)
        self.block = Block()
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.tanh(self.stem(x))))


def test_calibration_prefix_keeps_variable_modules_and_layers_whole():
    prefix, suffix = split_float_prefix(_WithBlock(), {"block", "head"})
    assert _ops(prefix.graph) == [("placeholder", "x"), ("call_module", "stem"), ("call_function", "tanh"),
                                  ("output", "output")]
    assert _ops(suffix.graph) == [("placeholder", "cached_0"), ("call_module", "block"), ("call_module", "head"),
                                  ("output", "output")]
    prefix, suffix = split_float_prefix(_WithBlock(), {"head"})  # the block is float: traced through, cached
    assert _ops(prefix.graph)[-4:] == [("call_module", "block.fc"), ("call_function", "relu"),
                                       ("call_function", "mul"), ("output", "output")]
    assert _ops(suffix.graph) == [("placeholder", "cached_0"), ("call_module", "head"), ("output", "output")]
    model = _WithBlock().eval()
    x = torch.randn(5, 4)
    with torch.no_grad():
        prefix, suffix = split_float_prefix(model, {"block", "head"})
        assert torch.equal(suffix(*prefix(x)), model(x))  # the same modules on the same values


def test_layer_inputs_step_through_user_subclasses_of_layers():
    torch.manual_seed(0)
    model = nn.Sequential(MyLinear(4, 6), nn.ReLU(), MyLinear(6, 3)).eval()
    x = torch.randn(9, 4)
    stepper = LayerInputs.build(model, ["0", "2"], x, batch_size=4)
    assert stepper is not None
    for name, got in stepper:
        assert torch.equal(torch.cat(got), capture_inputs(model, model.get_submodule(name), x, batch_size=4))
