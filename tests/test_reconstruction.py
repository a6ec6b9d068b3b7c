"""The layer-by-layer reconstruction shape (learnq.ptq.reconstruction) that AdaRound, AdaQuant and GPTQ share: each
method's ``*_weights`` equals the loop it used to write itself (same captures, seeds, targets, bias correction, in
the same order: bit for bit, same kernels on the same shapes), a new method is one small module on the helper, and
the checks run before anything changes."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from learnq.act import input_quantizers
from learnq.attach import Selection, select_weights
from learnq.errors import ConfigError, DataError
from learnq.grid import GridSpec, QuantizedTensor, compute_params
from learnq.ptq import PTQ, quantize
from learnq.ptq.adaquant import adaquant_weights, optimize_layer
from learnq.ptq.adaround import adaround_weights, layer_function, learn_rounding
from learnq.ptq.bias_correction import correct_quantized
from learnq.ptq.context import PTQContext, PTQMethod
from learnq.ptq.gptq import HessianSum, gptq_weight, gptq_weights
from learnq.ptq.reconstruction import (
    LayerByLayer,
    Observers,
    capture_inputs,
    for_each_input,
    run_reconstruction,
)
from learnq.ptq.registry import PTQ_METHODS
from learnq.quantized import attach_quantized, get_module, quantized_parameters, split_name

SPEC = GridSpec(bits=3)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 8), nn.ReLU(),
                         nn.Linear(8, 4)).eval()


X = torch.randn(40, 1, 4, 4, generator=torch.Generator().manual_seed(1))


def _reference(model: nn.Module, inputs: str, layer, *, seed: int | None = 0, float_copy: bool = True,
               bias_correction: bool = False) -> dict:
    """The loop AdaRound, AdaQuant and GPTQ each wrote before the helper: ``layer(i, name, module, weight,
    float_model)`` returns (qt, info)."""
    model.eval()
    names = select_weights(model, Selection())[0]
    float_model = copy.deepcopy(model) if float_copy or inputs == "float" else None
    if seed is not None:
        torch.manual_seed(seed)
    out = {}
    for i, name in enumerate(names):
        module = get_module(model, split_name(name)[0])
        weight = module.weight.detach()
        qt, info = layer(i, name, module, weight, float_model)
        if bias_correction:
            qt = correct_quantized(qt, weight, variance=False)
        attach_quantized(model, name, qt)
        out[name] = info
    return out


def _data(model, float_model, name, fn, weight, inputs):
    module_name = split_name(name)[0]
    x_float = capture_inputs(float_model, get_module(float_model, module_name), X)
    x_q = x_float if inputs == "float" else capture_inputs(model, get_module(model, module_name), X)
    with torch.no_grad():
        target = torch.cat([fn(x_float[j:j + 256], weight) for j in range(0, x_float.shape[0], 256)])
    return x_q, target


def _assert_same(a: nn.Module, b: nn.Module, infos_a: dict, infos_b: dict) -> None:
    qa, qb = dict(quantized_parameters(a)), dict(quantized_parameters(b))
    assert list(qa) == list(qb) == list(infos_a) == list(infos_b)
    for name in qa:
        for field in ("codes", "scale", "offset"):
            assert torch.equal(getattr(qa[name], field), getattr(qb[name], field)), (name, field)
    assert infos_a == infos_b


@pytest.mark.parametrize("inputs", ["quantized", "float"])
def test_adaround_weights_is_the_loop_it_replaced(inputs):
    model, ref = _net(), _net()
    got = adaround_weights(model, X, SPEC, inputs=inputs, iterations=15, lr=5e-2, seed=3)

    def layer(i, name, module, weight, float_model):
        fn = layer_function(module)
        x_q, target = _data(ref, float_model, name, fn, weight, inputs)
        return learn_rounding(weight, SPEC, fn, x_q, target, iterations=15, lr=5e-2, seed=3 + i, name=name)

    _assert_same(model, ref, got, _reference(ref, inputs, layer, seed=3))


@pytest.mark.parametrize(("inputs", "bias_correction"), [("quantized", True), ("float", False)])
def test_adaquant_weights_is_the_loop_it_replaced(inputs, bias_correction):
    model, ref = _net(), _net()
    got = adaquant_weights(model, X, SPEC, inputs=inputs, iterations=12, checks=3, seed=5,
                           bias_correction=bias_correction)

    def layer(i, name, module, weight, float_model):
        fn = layer_function(module)
        x_q, target = _data(ref, float_model, name, fn, weight, inputs)
        return optimize_layer(weight, SPEC, fn, x_q, target, iterations=12, checks=3, seed=5 + i, name=name)

    _assert_same(model, ref, got, _reference(ref, inputs, layer, seed=5, bias_correction=bias_correction))


@pytest.mark.parametrize(("inputs", "bias_correction"), [("quantized", True), ("float", False)])
def test_gptq_weights_is_the_loop_it_replaced(inputs, bias_correction):
    model, ref = _net(), _net()
    got = gptq_weights(model, X, SPEC, inputs=inputs, bias_correction=bias_correction)

    def layer(i, name, module, weight, float_model):  # one partial forward per layer (no paused pass)
        source = float_model if inputs == "float" else ref
        acc = HessianSum(module)
        for_each_input(source, get_module(source, split_name(name)[0]), X, acc.add)
        return gptq_weight(weight, acc.result()[0], SPEC, name=name)

    _assert_same(model, ref, got, _reference(ref, inputs, layer, seed=None, float_copy=False,
                                             bias_correction=bias_correction))


# -- a new reconstruction method: one module on the helper (here: round to nearest, layer by layer) -----------------
@dataclass
class NearestInfo:
    name: str
    index: int


def _nearest_weights(ctx: PTQContext, observers: Observers | None) -> dict[str, NearestInfo]:
    run = LayerByLayer(ctx.model, ctx.inputs, "Nearest", selection=ctx.selection, inputs=ctx.options["inputs"],
                       float_reference=False, device=ctx.device, progress=ctx.progress)
    spec = ctx.wspec
    for layer in run:
        if observers is not None:  # hand the input quantizer what a calibration pass would show it
            for_each_input(run.source, layer.module, ctx.inputs, observers[layer.module_name],
                           batch_size=ctx.batch_size)
        p = compute_params(layer.weight, spec, name=layer.name)
        qmin, qmax = spec.qrange()
        steps = spec.granularity.expand(p.scale, layer.weight.shape)
        codes = torch.clamp(torch.round(layer.weight / steps), qmin, qmax)
        run.attach(layer, QuantizedTensor(codes=codes.to(torch.int32), scale=p.scale, offset=p.offset,
                                          granularity=spec.granularity, bits=spec.bits, qmin=qmin, scheme=spec.scheme,
                                          method="nearest", dtype=layer.weight.dtype),
                   NearestInfo(layer.name, layer.index))
    return run.infos


def _method(stream: bool) -> PTQMethod:
    return PTQMethod("nearest-recon", "round to nearest, layer by layer (test)",
                     lambda ctx: run_reconstruction(ctx, "nearest", _nearest_weights, stream=stream),
                     options={"inputs": "quantized", "act_clip": "minmax"})


@pytest.mark.parametrize("stream", [False, True])
def test_a_new_reconstruction_method_is_one_small_module(monkeypatch, stream):
    monkeypatch.setitem(PTQ_METHODS, "nearest-recon", _method(stream))
    result = quantize(_net(), X, PTQ(method="nearest-recon", wbits=4, abits=8), progress=False)
    assert result.extra["nearest"] == [{"name": "0.weight", "index": 0}, {"name": "3.weight", "index": 1},
                                       {"name": "5.weight", "index": 2}]
    assert [row["name"] for row in result.layers] == ["0", "3", "5"]
    exported = dict(quantized_parameters(result.model))
    w = _net()[3].weight.detach()
    scale = exported["3.weight"].scale.reshape(-1, 1)  # per output channel, symmetric 4-bit: codes -8..7
    assert torch.equal(exported["3.weight"].codes, torch.clamp(torch.round(w / scale), -8, 7).to(torch.int32))
    acts = input_quantizers(result.model)
    assert list(acts) == ["0", "3", "5"] and all(q.enabled and q.count > 0 for q in acts.values())
    if stream:  # the streamed quantizers saw what a calibration pass over the quantized model shows them
        monkeypatch.setitem(PTQ_METHODS, "nearest-recon", _method(False))
        ref = quantize(_net(), X, PTQ(method="nearest-recon", wbits=4, abits=8), progress=False)
        for name, q in input_quantizers(ref.model).items():  # same kernels on the same batches: bit for bit
            assert torch.equal(q.alpha, acts[name].alpha) and q.count == acts[name].count


def test_checks_run_before_anything_changes():
    model = _net()
    for fn, title in ((adaround_weights, "AdaRound"), (adaquant_weights, "AdaQuant"), (gptq_weights, "GPTQ")):
        with pytest.raises(ConfigError, match=f"{title} inputs='both' is unknown"):
            fn(model, X, SPEC, inputs="both")
        with pytest.raises(DataError, match=f"{title} needs a non-empty tensor"):
            fn(model, X[:0], SPEC)
        with pytest.raises(ConfigError, match=f"{title} quantizes layer weights only, not '0.bias'"):
            fn(model, X, SPEC, selection=Selection(biases=True))
        assert not any(hasattr(m, "parametrizations") for m in model.modules())  # not one layer quantized
