"""LAPQ (seeds/001, Algorithm 1): quadratic fit in p, Powell limits and counting, the method on a trained model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from blob_util import blobs, trained_mlp
from torch import nn
from torch.utils.data import TensorDataset

import learnq
from learnq.clipping import clip_lp
from learnq.errors import ConfigError, DataError, ModelError
from learnq.ptq import PTQ_METHODS, quantize
from learnq.ptq.calib_loss import CalibrationLoss
from learnq.ptq.lapq import fit_p_star, lp_alphas, p_grid, powell
from learnq.quantized import quantized_parameters

PS = np.linspace(2, 4, 10)


def test_quadratic_fit_returns_the_vertex_of_exact_quadratic_data():
    p, how, coeffs = fit_p_star(PS, 0.5 * (PS - 3.1) ** 2 + 1.0)
    assert how == "fit" and p == pytest.approx(3.1, abs=1e-9)
    assert np.allclose(coeffs, [0.5, -3.1, 0.5 * 3.1**2 + 1.0])


def test_quadratic_fit_falls_back_to_the_best_sample_when_concave():
    losses = -((PS - 2.5) ** 2)  # a < 0: the vertex is a maximum; lowest sampled loss at p = 4
    p, how, coeffs = fit_p_star(PS, losses)
    assert how == "best-sample" and p == 4.0 and coeffs[0] < 0
    p, how, _ = fit_p_star(PS, np.where(PS > 3, np.inf, PS))  # non-finite loss
    assert how == "best-sample" and p == 2.0
    p, how, _ = fit_p_star([2.0, 3.0], [1.0, 0.5])  # too few samples to fit
    assert how == "best-sample" and p == 3.0


def test_quadratic_fit_clamps_the_vertex_into_the_range():
    p, how, _ = fit_p_star(PS, (PS - 5.0) ** 2)
    assert (p, how) == (4.0, "clamped")
    p, how, _ = fit_p_star(PS, (PS - 1.0) ** 2)
    assert (p, how) == (2.0, "clamped")
    p, how, _ = fit_p_star(PS, (PS - 3.5) ** 2, p_range=(2.0, 3.0))
    assert (p, how) == (3.0, "clamped")
    with pytest.raises(ConfigError):
        fit_p_star(PS, PS[:3])


def test_p_grid():
    assert np.allclose(p_grid(), PS)
    with pytest.raises(ConfigError):
        p_grid(4.0, 2.0)
    with pytest.raises(ConfigError):
        p_grid(p_count=0)


def _rosenbrock_counted():
    calls = []

    def f(x):
        calls.append(np.array(x))
        return float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))

    return f, calls


@pytest.mark.parametrize("maxiter", [1, 2])
def test_powell_runs_only_maxiter_iterations_and_counts_every_call(maxiter):
    f, calls = _rosenbrock_counted()
    x0 = np.array([-1.2, 1.0, -0.5, 0.8])
    res = powell(f, x0, maxiter=maxiter)
    assert res.nit == maxiter  # Rosenbrock is far from converged after 1 or 2 iterations
    assert res.nfev == len(calls)
    evaluated = list(calls)
    values = [f(x) for x in evaluated]
    assert res.fun == min(values) and res.fun < f(x0)
    assert f(res.x) == res.fun
    calls.clear()
    f2, calls2 = _rosenbrock_counted()
    more = powell(f2, x0, maxiter=maxiter + 3)
    assert len(calls2) > len(calls) and more.fun <= res.fun


def test_powell_maxiter_zero_evaluates_the_start_once():
    f, calls = _rosenbrock_counted()
    res = powell(f, np.array([0.5, 0.5]), maxiter=0)
    assert len(calls) == 1 and res.nfev == 1 and res.nit == 0
    assert np.array_equal(res.x, [0.5, 0.5])
    with pytest.raises(ConfigError):
        powell(f, np.array([0.5]), maxiter=-1)


@pytest.fixture(scope="module")
def trained():
    """A 4-layer MLP trained on seeded Gaussian blobs; calibration and test sets."""
    x, labels = blobs(12, 5, 900, spread=2.5)
    net = trained_mlp(x[:600], labels[:600], (32, 32, 24), 5, steps=150)
    return net, TensorDataset(x[600:728], labels[600:728]), (x[728:], labels[728:])


def test_lapq_method_lowers_the_loss_below_its_lp_start(trained, tmp_path):
    net, calib, _ = trained
    result = quantize(net, calib, method="lapq", granularity="tensor", wbits=2, abits=3, progress=False, seed=0)
    rep = result.extra["lapq"]
    assert rep["names"] == ["2.input", "2.weight", "4.input", "4.weight"]  # first and last layers float
    assert rep["final_loss"] <= rep["start_loss"]
    assert rep["final_loss"] < rep["start_loss"]  # Powell found better steps at W2A3
    assert rep["powell_iterations"] <= 2 and rep["cached"]
    extra = 0 if any(np.isclose(rep["p_star"], p) for p in rep["ps"]) else 1
    assert result.loss_evals == rep["loss_evals"] == 10 + extra + rep["powell_evals"]
    # the model is left at the best point: a fresh evaluation gives the reported loss
    fresh = CalibrationLoss(result.model, calib, cache=False).evaluate()
    assert fresh == pytest.approx(rep["final_loss"], rel=1e-5)
    assert np.allclose(CalibrationLoss(result.model, calib).get_alphas(), rep["alphas"], rtol=1e-6)
    names = dict(quantized_parameters(result.model))
    assert set(names) == {"2.weight", "4.weight"}
    assert all(qt.method == "lapq" and qt.extra.get("bias_correction") == "mean" for qt in names.values())
    assert net[2].weight.requires_grad and not hasattr(net[2], "parametrizations")  # the caller's model untouched
    # the model file computes exactly what the LAPQ model computes
    learnq.save(result.model, tmp_path / "lapq.safetensors")
    fresh = learnq.load(tmp_path / "lapq.safetensors", copy.deepcopy(net))
    x, _ = calib.tensors
    with torch.no_grad():
        assert torch.equal(fresh(x), result.model(x))


def test_run_lapq_start_is_the_lp_point_of_p_star(trained):
    net, calib, _ = trained
    result = quantize(net, calib, method="lapq", granularity="tensor", wbits=3, abits=3, progress=False, maxiter=0)
    rep = result.extra["lapq"]
    model = result.model
    loss = CalibrationLoss(model, calib)
    # maxiter = 0: the model ends at α_{p*}, each α the Lp-optimal clip of its tensor at p*
    for c, a in zip(loss.coordinates, rep["alphas"], strict=True):
        expected = float(clip_lp(c.values(), c.spec(), p=rep["p_star"]))
        assert a == pytest.approx(expected, rel=1e-6)
    assert rep["final_loss"] == pytest.approx(rep["start_loss"])
    assert rep["powell_evals"] == 1


def test_lapq_linear_space_and_no_fit(trained):
    net, calib, _ = trained
    result = quantize(net, calib, method="lapq", granularity="tensor", wbits=3, abits=3, progress=False, space="linear",
                      quadratic=False, maxiter=1, p_count=3)
    rep = result.extra["lapq"]
    assert rep["p_star"] == 2.0 and rep["p_star_how"] == "no-fit"
    assert rep["final_loss"] <= rep["start_loss"] and min(rep["alphas"]) > 0
    assert len(rep["p_losses"]) == 3


def test_lapq_registration_and_errors(trained):
    net, calib, _ = trained
    assert PTQ_METHODS["lapq"].skip_first_last
    x, _ = calib.tensors
    with pytest.raises(DataError):
        quantize(net, x, method="lapq", wbits=4, abits=4, progress=False)  # no labels
    with pytest.raises(ConfigError):
        quantize(net, calib, method="lapq", progress=False, space="cubic")
    with pytest.raises(ConfigError):
        quantize(net, calib, method="lapq", progress=False, maxiter="2")
    small = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 5))
    with pytest.raises(ModelError):
        quantize(small, calib, method="lapq", progress=False)  # nothing left without the first and last layers
    done = quantize(small, calib, method="lapq", granularity="tensor", wbits=4, abits=32, skip_first_last=False,
                    progress=False, maxiter=1)
    assert done.extra["lapq"]["names"] == ["0.weight", "2.weight"]


@pytest.mark.parametrize(("bias_correction", "correct_bias", "expected"),
                         [(True, True, "mean"), (False, False, None), (True, False, "mean")])
def test_lapq_bias_correction_switches(trained, bias_correction, correct_bias, expected):
    net, calib, _ = trained
    result = quantize(net, calib, method="lapq", granularity="tensor", wbits=4, abits=4,
                      bias_correction=bias_correction, correct_bias=correct_bias, maxiter=0, p_count=3, progress=False)
    assert {qt.extra.get("bias_correction") for _, qt in quantized_parameters(result.model)} == {expected}


def test_lp_alphas_per_channel(trained):
    net, calib, _ = trained
    result = quantize(net, calib, method="lapq", wbits=3, abits=32, granularity="channel", progress=False,
                      maxiter=0, p_count=3)
    loss = CalibrationLoss(result.model, calib)
    assert loss.names[0] == "2.weight[0]" and len(loss.names) == 32 + 24
    alphas = lp_alphas(loss.coordinates, 2.0)
    assert [a.numel() for a in alphas] == [32, 24]
