"""SQuant, k-means, QDrop and PD-Quant on the reconstruction shape (learnq.ptq.reconstruction): each method equals the
loop it used to write itself (kept here as the reference: same selection, seeds, float copy, captures, bias
correction and recording order: bit for bit, same kernels on the same shapes), LayerByLayer.blocks groups the
selected weights as QDrop and PD-Quant did, and the checks run before anything changes."""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import asdict

import pytest
import torch
from torch import nn

from learnq.act import input_quantizers
from learnq.attach import Selection, select_weights
from learnq.clipping import choose_clip
from learnq.errors import ConfigError, ModelError
from learnq.ptq import PTQ, quantize
from learnq.ptq.adaround import layer_function
from learnq.ptq.bias_correction import correct_quantized
from learnq.ptq.context import PTQContext, PTQMethod
from learnq.ptq.kmeans import palettize
from learnq.ptq.pdquant import blocks as pd_blocks
from learnq.ptq.pdquant import learn_rounding_pd
from learnq.ptq.qdrop import block_of, reconstruct_block
from learnq.ptq.reconstruction import LayerByLayer, capture_inputs
from learnq.ptq.registry import PTQ_METHODS
from learnq.ptq.squant import squant_weight
from learnq.quantized import attach_quantized, get_module, quantized_parameters, split_name


class _Res(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.conv(x))


def _net() -> nn.Module:
    """A Sequential with residual children (QDrop blocks of their own; the Identity before the first one a block
    without weights) and a plain conv/linear chain."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([("pre", nn.Identity()), ("res0", _Res(2)), ("c1", nn.Conv2d(2, 4, 3, padding=1)),
                                      ("r1", nn.ReLU()), ("res", _Res(4)),
                                      ("flat", nn.Flatten()), ("fc1", nn.Linear(4 * 16, 12)), ("r2", nn.ReLU()),
                                      ("fc2", nn.Linear(12, 6))])).eval()


X = torch.randn(40, 2, 4, 4, generator=torch.Generator().manual_seed(1))


# -- the loops the methods wrote before LayerByLayer (references) ---------------------------------------------------
def _old_squant(ctx: PTQContext) -> dict:
    opts, infos = ctx.options, []
    for name in select_weights(ctx.model, ctx.selection)[0]:
        w = get_module(ctx.model, split_name(name)[0]).weight.detach()
        clip = None if opts["clip"] == "minmax" else choose_clip(w, ctx.wspec, opts["clip"])
        qt, info = squant_weight(w, ctx.wspec, clip=clip, kernel=opts["kernel"], channel=opts["channel"],
                                 bias_correction=ctx.bias_correction, variance_correction=ctx.variance_correction,
                                 name=name)
        attach_quantized(ctx.model, name, qt)
        ctx.record_weights([name])
        infos.append(info)
    ctx.attach_activations(clip=opts["act_clip"])
    return {"squant": infos}


def _old_kmeans(ctx: PTQContext) -> dict:
    opts, rows = ctx.options, []
    for i, name in enumerate(select_weights(ctx.model, ctx.selection)[0]):
        current = getattr(get_module(ctx.model, split_name(name)[0]), split_name(name)[1]).detach()
        qt, history = palettize(current, ctx.wspec.bits, opts["dim"], ctx.wspec.granularity, iters=opts["iters"],
                                tol=opts["tol"], palette_dtype=opts["palette_dtype"], seed=ctx.seed + i, name=name)
        attach_quantized(ctx.model, name, qt)
        ctx.record_weights([name])
        rows.append({"name": name, "objective_init": history[0], "objective": history[-1],
                     "iterations": len(history) - 1, "numel": current.numel()})
    ctx.attach_activations(clip=opts["act_clip"])
    return {"kmeans": rows}


def _old_qdrop(ctx: PTQContext) -> dict:
    opts = ctx.options
    float_model = copy.deepcopy(ctx.model)
    ctx.attach_activations(clip=opts["act_clip"])
    chosen, infos = select_weights(ctx.model, ctx.selection)[0], []
    for i, names in enumerate(block_of(ctx.model)):
        inside = [w for w in chosen if any(w.startswith(f"{n}.") for n in names)]
        if not inside:
            continue
        qts, info = reconstruct_block(ctx.model, float_model, names, inside, ctx.wspec, ctx.inputs,
                                      clip=opts["clip"], drop_prob=opts["drop_prob"], iterations=opts["iterations"],
                                      lr=opts["lr"], reg_weight=opts["reg_weight"],
                                      beta_range=(opts["beta_start"], opts["beta_end"]), warmup=opts["warmup"],
                                      batch_size=opts["round_batch_size"], seed=ctx.seed + i)
        for name, qt in qts.items():
            if ctx.bias_correction:
                qt = correct_quantized(qt, get_module(ctx.model, split_name(name)[0]).weight.detach())
            attach_quantized(ctx.model, name, qt)
            ctx.record_weights([name])
        infos.append(info)
    return {"qdrop": [asdict(info) for info in infos]}


def _old_pdquant(ctx: PTQContext) -> dict:  # without distribution correction (no folded BatchNorm here)
    opts, model, infos = ctx.options, ctx.model, []
    float_model = copy.deepcopy(model)
    with torch.no_grad():
        log_p = torch.log_softmax(float_model(ctx.inputs), dim=1)
    names = select_weights(model, ctx.selection)[0]
    for i, group in enumerate(pd_blocks(names, opts["block_depth"])):
        modules, targets = [], []
        for name in group:
            module = get_module(model, split_name(name)[0])
            x_float = capture_inputs(float_model, get_module(float_model, split_name(name)[0]), ctx.inputs)
            with torch.no_grad():
                targets.append(layer_function(module)(x_float, module.weight.detach()))
            modules.append(module)
        results = learn_rounding_pd(model, modules, ctx.wspec, ctx.inputs, log_p, targets,
                                    clips=[choose_clip(m.weight.detach(), ctx.wspec, opts["clip"]) for m in modules],
                                    iterations=opts["iterations"], lr=opts["lr"], reg_weight=opts["reg_weight"],
                                    mse_weight=opts["mse_weight"], beta_range=(opts["beta_start"], opts["beta_end"]),
                                    warmup=opts["warmup"], batch_size=opts["round_batch_size"], seed=ctx.seed + i,
                                    names=group)
        for name, (qt, info) in zip(group, results, strict=True):
            attach_quantized(model, name, qt)
            ctx.record_weights([name])
            infos.append(info)
    ctx.attach_activations(clip=opts["act_clip"])
    return {"pdquant": infos}


OLD = {"squant": _old_squant, "kmeans": _old_kmeans, "qdrop": _old_qdrop, "pdquant": _old_pdquant}
CASES = [  # (method, PTQ fields): input modes and options that change the loop, bias correction, A8 and A32
    ("squant", {"wbits": 4, "abits": 8, "bias_correction": True}),
    ("squant", {"wbits": 3, "abits": 32, "granularity": "tensor", "options": {"kernel": False}}),
    ("kmeans", {"wbits": 3, "abits": 8, "options": {"iters": 4}}),
    ("kmeans", {"wbits": 2, "abits": 32, "granularity": "tensor", "selection": Selection(biases=True),
                "options": {"dim": 2, "iters": 3}}),
    ("qdrop", {"wbits": 3, "abits": 8, "bias_correction": True, "options": {"iterations": 6}}),
    ("qdrop", {"wbits": 2, "abits": 32, "options": {"iterations": 6, "drop_prob": 0.0}}),
    ("pdquant", {"wbits": 3, "abits": 8, "options": {"iterations": 6}}),
    ("pdquant", {"wbits": 3, "abits": 32, "options": {"iterations": 6, "block_depth": 1}}),
]


@pytest.mark.parametrize(("method", "fields"), CASES)
def test_each_method_is_the_loop_it_replaced(monkeypatch, method, fields):
    new = quantize(_net(), X, PTQ(method=method, **fields), progress=False, seed=2)
    info = PTQ_METHODS[method]
    monkeypatch.setitem(PTQ_METHODS, method, PTQMethod(method, info.description, OLD[method], options=info.options))
    old = quantize(_net(), X, PTQ(method=method, **fields), progress=False, seed=2)
    qa, qb = dict(quantized_parameters(new.model)), dict(quantized_parameters(old.model))
    assert list(qa) == list(qb) and len(qa) >= 4
    for name in qa:
        for field in ("codes", "scale", "offset", "palette"):
            a, b = getattr(qa[name], field), getattr(qb[name], field)
            assert (a is None and b is None) or torch.equal(a, b), (name, field)
    assert new.extra == old.extra and new.layers == old.layers
    acts_new, acts_old = input_quantizers(new.model), input_quantizers(old.model)
    assert list(acts_new) == list(acts_old)
    for name, q in acts_new.items():
        assert torch.equal(q.alpha, acts_old[name].alpha)
    with torch.no_grad():
        assert torch.equal(new.model(X), old.model(X))


def test_blocks_group_the_selected_weights_as_qdrop_and_pdquant_did():
    model = _net()
    run = LayerByLayer(model, X, "Test", float_reference=False)
    groups = block_of(model)
    assert groups == [["pre"], ["res0"], ["c1", "r1"], ["res"], ["flat", "fc1", "r2"], ["fc2"]]
    got = [(b.index, b.modules, [layer.name for layer in b.layers]) for b in run.blocks(groups)]
    assert got == [(1, ["res0"], ["res0.conv.weight"]), (2, ["c1", "r1"], ["c1.weight"]),  # index counts "pre"
                   (3, ["res"], ["res.conv.weight"]), (4, ["flat", "fc1", "r2"], ["fc1.weight"]),
                   (5, ["fc2"], ["fc2.weight"])]
    # a weight belongs to the first group holding it; a module above it holds it too
    assert [[la.name for la in b.layers] for b in run.blocks([["res.conv", "c1"], ["res0", "res", "fc1", "fc2"]])] \
        == [["c1.weight", "res.conv.weight"], ["res0.conv.weight", "fc1.weight", "fc2.weight"]]
    assert [la.index for b in run.blocks([["fc2"], ["res0", "c1", "res", "fc1"]]) for la in b.layers] == [4, 0, 1, 2, 3]


def test_a_weight_in_no_block_is_refused_before_anything_changes():
    model = _net()
    run = LayerByLayer(model, X, "Test", float_reference=False)
    with pytest.raises(ModelError, match=r"Test found no block holding \['fc2.weight'\]: put it somewhere, or leave"):
        next(run.blocks([["res0"], ["c1"], ["res"], ["fc1"]], hint="put it somewhere"))
    assert not any(hasattr(m, "parametrizations") for m in model.modules())


@pytest.mark.parametrize(("method", "title"), [("squant", "SQuant"), ("qdrop", "QDrop"), ("pdquant", "PD-Quant")])
def test_biases_are_refused_by_name_before_anything_changes(method, title):
    model = _net()
    with pytest.raises(ConfigError, match=f"{title} quantizes layer weights only, not 'res0.conv.bias', 'c1.bias', "
                                          "'res.conv.bias', "
                                          "'fc1.bias', 'fc2.bias'; select weights"):
        quantize(model, X, PTQ(method=method, wbits=4, abits=8, selection=Selection(biases=True),
                               options={"iterations": 2} if method != "squant" else {}), inplace=True, progress=False)
    assert not any(hasattr(m, "parametrizations") for m in model.modules()) and not input_quantizers(model)
