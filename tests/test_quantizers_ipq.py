"""iPQ (learnq.quantizers.ipq) and Quant-Noise with iPQ noise: the reconstruction error is the k-means objective,
the centroid gradient is the mean of its blocks' gradients, the file holds codebook + packed codes and loads bit for
bit, Quant-Noise's selected blocks take their nearest centroid."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import learnq
from learnq.errors import ConfigError
from learnq.quantized import quantized_parameters
from learnq.quantizers import IPQ, QAT_METHODS, IPQQuantizer, QuantNoise
from learnq.quantizers.quant_noise import PQNoiseQuantizer, block_mask


def _brute_force_objective(w: torch.Tensor, codebook: torch.Tensor, d: int) -> torch.Tensor:
    """Σ_v min_j ‖w_v - c_j‖², float64, every distance computed."""
    v = w.double().reshape(-1, 1, d)
    return (v - codebook.double().reshape(1, -1, d)).pow(2).sum(-1).min(dim=1).values.sum()


def test_reconstruction_error_equals_the_kmeans_objective():
    torch.manual_seed(0)
    w = torch.randn(16, 12)
    q = IPQQuantizer(w, bits=3, block_size=4, iters=10, seed=1)
    assert q.codebook.shape == (1, 8, 4) and q.assignments.shape == (48,)
    recon = q.quantized_value(w)
    err = (w.double() - recon.double()).pow(2).sum()
    # the same sum in other orders (per block, then over blocks; float32 distances inside lloyd): 1e-5 relative
    torch.testing.assert_close(err, torch.tensor(q.kmeans_objective, dtype=torch.float64), rtol=1e-5, atol=0)
    torch.testing.assert_close(err, _brute_force_objective(w, q.codebook.detach(), 4), rtol=1e-6, atol=0)
    # every block is its centroid: recon rows are codebook rows
    assert torch.equal(recon.reshape(-1, 4), q.codebook.detach()[0][q.assignments])
    # k-means did something: better than the k-means++ seeds alone
    assert q.kmeans_objective < IPQQuantizer(w, bits=3, block_size=4, iters=0, seed=1).kmeans_objective


def test_centroid_gradient_is_the_mean_over_its_blocks_and_weight_gets_none():
    torch.manual_seed(1)
    w = torch.randn(6, 4)
    q = IPQQuantizer(w, bits=2, block_size=2, iters=5)
    x = w.clone().requires_grad_(True)
    c = torch.randn(6, 4)
    (q(x) * c).sum().backward()
    blocks = c.reshape(-1, 2)
    expected = torch.zeros(4, 2)
    for j in range(4):
        members = q.assignments == j
        if members.any():
            expected[j] = blocks[members].mean(dim=0)  # Stock et al. §3.2: the average of the blocks' gradients
    torch.testing.assert_close(q.codebook.grad[0], expected, rtol=1e-6, atol=1e-7)  # one division
    assert torch.equal(x.grad, torch.zeros_like(x))  # the float weight of a quantized layer no longer trains


def test_model_file_holds_codebook_and_packed_codes_and_loads_bit_exact(tmp_path):
    torch.manual_seed(2)

    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    model = build()
    handle = learnq.prepare(model, IPQ(bits=4, block_size=8, palette_dtype="float16"))
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = model[0].parametrizations.weight[0].codebook.detach().clone()
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert not torch.equal(model[0].parametrizations.weight[0].codebook, start)  # fine-tuned
    model.eval()
    with torch.no_grad():
        out = model(x)
        learnq.save(model, tmp_path / "m.safetensors")
        loaded = learnq.load(tmp_path / "m.safetensors", build()).eval()
        assert torch.equal(loaded(x), out)
        handle.freeze()
        assert torch.equal(model(x), out)
    qts = dict(quantized_parameters(loaded))
    qt = qts["0.weight"]
    assert qt.method == "ipq" and qt.palette.shape == (1, 16, 8) and qt.palette.dtype == torch.float16
    assert qt.code_bits() == 512 // 8 * 4  # 64 blocks of 8 values, a 4-bit code each
    assert handle.quantizers["0.weight"].true_size_bits() == 64 * 4 + 16 * 8 * 16


def test_blocks_must_divide_the_weight():
    with pytest.raises(ConfigError, match="blocks of 8"):
        learnq.prepare(nn.Sequential(nn.Linear(5, 3)), IPQ(bits=2, block_size=8))


def test_config():
    assert QAT_METHODS["ipq"] is IPQ and learnq.IPQ is IPQ
    assert IPQ.from_dict(IPQ(bits=6, block_size=9).to_dict()) == IPQ(bits=6, block_size=9)
    for bad in ({"bits": 0}, {"block_size": 0}, {"iters": -1}, {"palette_dtype": "bfloat16"}):
        with pytest.raises(ConfigError):
            IPQ(**bad)


def test_quant_noise_ipq_selected_blocks_take_their_nearest_centroid():
    torch.manual_seed(3)
    w = torch.randn(10, 8)
    q = PQNoiseQuantizer(w, bits=2, block_size=4, rate=0.5, iters=0)
    pal = q.centroids.clone()
    nearest = _brute_force_nearest(w, pal[0], 4)
    torch.manual_seed(7)
    mask = block_mask((10, 8), 4, 0.5)
    torch.manual_seed(7)
    x = w.clone().requires_grad_(True)
    y = q(x)
    assert 0 < int(mask.sum()) < mask.numel()
    assert torch.equal(y[~mask], w[~mask])
    assert torch.equal(y[mask], nearest[mask])
    c = torch.randn(10, 8)
    (y * c).sum().backward()
    assert torch.equal(x.grad, c)  # exact on float blocks, straight through on the others
    q.eval()
    assert torch.equal(q(w), nearest)
    assert q.export_quantized(w).method == "quant_noise"


def test_quant_noise_ipq_refreshes_its_codebook_each_step():
    torch.manual_seed(4)
    w = torch.randn(32, 8)
    q = PQNoiseQuantizer(w, bits=2, block_size=4, rate=0.1, iters=1)
    before = q.centroids.clone()
    q(w * 3)  # the weights moved: one Lloyd step follows them
    assert not torch.equal(q.centroids, before)
    err_after = _brute_force_objective(w * 3, q.centroids, 4)
    assert err_after <= _brute_force_objective(w * 3, before, 4)  # a Lloyd step never increases the objective


def test_quant_noise_ipq_through_the_config_and_file(tmp_path):
    torch.manual_seed(5)

    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))

    model = build()
    learnq.prepare(model, QuantNoise(quantizer="ipq", bits=3, block_size=4, rate=0.2))
    x = torch.randn(16, 8)
    model(x).sum().backward()
    model.eval()
    with torch.no_grad():
        out = model(x)
        learnq.save(model, tmp_path / "m.safetensors")
        assert torch.equal(learnq.load(tmp_path / "m.safetensors", build()).eval()(x), out)


def _brute_force_nearest(w: torch.Tensor, codebook: torch.Tensor, d: int) -> torch.Tensor:
    v = w.reshape(-1, 1, d)
    idx = (v - codebook.reshape(1, -1, d)).pow(2).sum(-1).argmin(dim=1)
    return codebook[idx].reshape(w.shape)
