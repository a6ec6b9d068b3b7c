"""Layer-by-layer iPQ (learnq.quantizers.ipq_layerwise): layer s is float until step s·S, then it is k-means
quantized from its weight as fine-tuned so far and only its codebook trains; eval and export before a layer's step
quantize its current weight without committing; the schedule survives a state-dict round trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import learnq
from learnq.errors import ConfigError
from learnq.quantized import quantized_parameters
from learnq.quantizers import QAT_METHODS, IPQLayerwise, IPQQuantizer, LayerwiseIPQQuantizer


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)


def _quantizers(model: nn.Module) -> list[LayerwiseIPQQuantizer]:
    return [model[i].parametrizations.weight[0] for i in (0, 2, 4)]


def _step(model, opt, x, y) -> None:
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_layers_are_quantized_in_order_every_stage_steps_from_their_fine_tuned_weights():
    model = _mlp()
    learnq.prepare(model, IPQLayerwise(bits=2, block_size=4, stage_steps=3, iters=10, seed=2))
    qs = _quantizers(model)
    assert [q.stage() for q in qs] == [0, 1, 2] and [q.start_step() for q in qs] == [0, 3, 6]
    x, y = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    active = []
    for step in range(8):
        weights = [m.parametrizations.weight.original.detach().clone() for m in (model[0], model[2], model[4])]
        _step(model, opt, x, y)
        active.append([bool(q.active) for q in qs])
        for i, q in enumerate(qs):
            if step == q.start_step():  # quantized at this step: k-means of the weight as it was before the step
                ref = IPQQuantizer(weights[i], bits=2, block_size=4, iters=10, seed=2)
                assert torch.equal(q.assignments, ref.assignments)
                assert q.kmeans_objective == ref.kmeans_objective
    assert active == [[True, False, False]] * 3 + [[True, True, False]] * 3 + [[True, True, True]] * 2
    assert [int(q.steps) for q in qs] == [8, 8, 8]


def test_float_layers_get_the_exact_gradient_and_quantized_ones_train_only_their_codebook():
    model = _mlp()
    reference = _mlp()  # the same initial weights, no quantizer
    learnq.prepare(model, IPQLayerwise(bits=2, block_size=4, stage_steps=5))
    x, y = _data()
    nn.functional.cross_entropy(model(x), y).backward()
    q0 = _quantizers(model)[0]
    assert bool(q0.active) and not any(bool(q.active) for q in _quantizers(model)[1:])
    # the reference network with layer 0's weight replaced by its iPQ reconstruction: the same forward
    with torch.no_grad():
        reference[0].weight.copy_(q0.codebook[0][q0.assignments].reshape(16, 8))
    nn.functional.cross_entropy(reference(x), y).backward()
    for i in (2, 4):  # float layers: the gradient of the float network (the same kernels on the same shapes)
        assert torch.equal(model[i].parametrizations.weight.original.grad, reference[i].weight.grad)
        assert torch.equal(_quantizers(model)[i // 2].codebook.grad, torch.zeros(1, 4, 4))  # zero, not None: DDP
    assert torch.equal(model[0].parametrizations.weight.original.grad, torch.zeros(16, 8))
    # the codebook's gradient: the mean of its blocks' gradients (Stock et al. §3.2)
    blocks = reference[0].weight.grad.reshape(-1, 4)
    expected = torch.stack([blocks[q0.assignments == j].mean(0) if (q0.assignments == j).any() else torch.zeros(4)
                            for j in range(4)])
    torch.testing.assert_close(q0.codebook.grad[0], expected, rtol=1e-6, atol=1e-7)  # one sum, one division


def test_eval_and_file_before_a_layers_step_quantize_its_current_weight_without_committing(tmp_path):
    model = _mlp()
    handle = learnq.prepare(model, IPQLayerwise(bits=3, block_size=4, stage_steps=100, iters=5, seed=1))
    x, y = _data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):
        _step(model, opt, x, y)
    q2 = _quantizers(model)[2]
    assert not bool(q2.active)
    model.eval()
    w2 = model[4].parametrizations.weight.original.detach()
    ref = IPQQuantizer(w2, bits=3, block_size=4, iters=5, seed=1)  # k-means of the weight as it is now
    with torch.no_grad():
        assert torch.equal(model[4].weight, ref.quantized_value(w2))
        out = model(x)
        learnq.save(model, tmp_path / "m.safetensors")
        loaded = learnq.load(tmp_path / "m.safetensors", _mlp()).eval()
        assert torch.equal(loaded(x), out)
    qt = dict(quantized_parameters(loaded))["4.weight"]
    assert qt.method == "ipq_layerwise" and qt.palette.shape == (1, 8, 4)
    assert not bool(q2.active) and int(q2.steps) == 2  # evaluating and saving changed no training state
    model.train()
    _step(model, opt, x, y)  # the weight moves: the next eval follows it
    model.eval()
    w2 = model[4].parametrizations.weight.original.detach()
    with torch.no_grad():
        assert torch.equal(model[4].weight, IPQQuantizer(w2, bits=3, block_size=4, iters=5, seed=1)
                           .quantized_value(w2))
        frozen_out = model(x)
        handle.freeze()
        assert torch.equal(model(x), frozen_out)


def test_the_schedule_survives_a_state_dict_round_trip():
    model = _mlp()
    learnq.prepare(model, IPQLayerwise(bits=2, block_size=4, stage_steps=2))
    x, y = _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        _step(model, opt, x, y)
    state = model.state_dict()
    resumed = _mlp()
    learnq.prepare(resumed, IPQLayerwise(bits=2, block_size=4, stage_steps=2))
    resumed.load_state_dict(state)
    assert [bool(q.active) for q in _quantizers(resumed)] == [True, True, False]
    assert [int(q.steps) for q in _quantizers(resumed)] == [3, 3, 3]
    for a, b in zip(_quantizers(model), _quantizers(resumed), strict=True):
        assert torch.equal(a.codebook, b.codebook) and torch.equal(a.assignments, b.assignments)
    _step(resumed, torch.optim.SGD(resumed.parameters(), lr=0.1), x, y)  # step 3: layer 2 stays float until 4
    assert not bool(_quantizers(resumed)[2].active)
    _step(resumed, torch.optim.SGD(resumed.parameters(), lr=0.1), x, y)
    assert bool(_quantizers(resumed)[2].active)


def test_config():
    assert QAT_METHODS["ipq_layerwise"] is IPQLayerwise and learnq.IPQLayerwise is IPQLayerwise
    cfg = IPQLayerwise(bits=6, block_size=9, stage_steps=7)
    assert IPQLayerwise.from_dict(cfg.to_dict()) == cfg
    assert IPQLayerwise.recipe_options()["stage_steps"] == 100
    for bad in ({"stage_steps": 0}, {"bits": 0}, {"block_size": 0}):
        with pytest.raises(ConfigError):
            IPQLayerwise(**bad)
