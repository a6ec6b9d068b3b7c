"""Activation quantizers (learnq.act): PACT values and gradients by hand (Choi et al. 2018, Eq. 1-3), the
observer's running range, and inserting quantizers after ReLU/ReLU6 modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from learnq.act import PACT, ObserverFakeQuant, QuantizedActivation, insert_activation_quantizers
from learnq.errors import ConfigError, ModelError, QuantizationError


def test_pact_forward_and_gradients_by_hand():
    pact = PACT(bits=2, init_clip=1.0)
    x = torch.tensor([-1.0, 0.2, 0.5, 1.3, 3.0], requires_grad=True)
    y = pact(x)
    # clamp to [0, 1] then 3 steps of 1/3: 0.2·3 = 0.6 -> 1, 0.5·3 = 1.5 -> 2 (ties to even)
    assert torch.allclose(y, torch.tensor([0.0, 1 / 3, 2 / 3, 1.0, 1.0]))
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])).sum().backward()
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 0.0, 0.0]  # ∂y_q/∂x = 1 on [0, α)
    assert pact.clip.grad.item() == 9.0  # ∂y_q/∂α = 1 where x >= α
    with pytest.raises(ConfigError, match="PACT.init_clip"):
        PACT(init_clip=0.0)


def test_observer_tracks_a_running_range_and_clips_gradients():
    obs = ObserverFakeQuant(bits=8, momentum=0.5)
    with pytest.raises(QuantizationError, match="observed"):
        obs.eval()(torch.ones(3))
    obs.train()
    obs(torch.tensor([0.0, 2.0]))
    assert obs.running_max.item() == 2.0
    obs(torch.tensor([0.0, 4.0]))
    assert obs.running_max.item() == 3.0  # 0.5·2 + 0.5·4
    obs.eval()
    x = torch.tensor([0.0, 1.5, 3.0, 5.0], requires_grad=True)
    y = obs(x)
    step = 3.0 / 255
    assert torch.allclose(y, torch.tensor([0.0, round(1.5 / step) * step, 3.0, 3.0]))
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(4, 4)
        self.block = nn.Sequential(nn.Linear(4, 4), nn.ReLU6())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.act(self.fc2(self.act(self.fc1(x)))))


def test_insert_pact_and_observer_quantizers():
    torch.manual_seed(0)
    net = Net()
    names = insert_activation_quantizers(net, bits=4, method="pact")
    assert names == ["act", "block.1"]
    assert isinstance(net.act, QuantizedActivation) and isinstance(net.block[1], QuantizedActivation)
    assert net.act.quantizer.clip.item() == 10.0 and net.block[1].quantizer.clip.item() == 6.0
    out = net(torch.randn(5, 4))
    levels = out / (6.0 / 15)
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # outputs lie on the 4-bit grid of [0, 6]
    with pytest.raises(ConfigError, match="already"):
        insert_activation_quantizers(net)
    net2 = Net()
    insert_activation_quantizers(net2, bits=8, method="observer", after=nn.ReLU)
    assert isinstance(net2.act.quantizer, ObserverFakeQuant) and isinstance(net2.block[1], nn.ReLU6)
    with pytest.raises(ModelError, match="F.relu"):
        insert_activation_quantizers(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ConfigError, match="unknown"):
        insert_activation_quantizers(Net(), method="lsq")


# -- model files: save records the wrapped activations, load wraps a freshly built network ---------------------------
def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU6(), nn.Linear(16, 3))


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU6(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 4, 3))


def _train(model: nn.Module, x: torch.Tensor, steps: int = 5) -> None:
    y = torch.arange(x.shape[0]) % 3
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("build", [mlp, small_cnn])
@pytest.mark.parametrize("method", ["pact", "observer"])
def test_save_load_rewraps_and_is_bit_identical(tmp_path, build, method):
    import learnq
    from learnq.act import ACTIVATIONS_KEY

    torch.manual_seed(0)
    model = build()
    names = insert_activation_quantizers(model, bits=3, method=method, init_clip=0.5 if method == "pact" else None)
    x = torch.randn(6, 1, 3, 4)
    _train(model, x)
    if method == "pact":  # the clips were learned (moved away from their initial value)
        assert all(model.get_submodule(n).quantizer.clip.item() != 0.5 for n in names)
    learnq.save(model, tmp_path / "m.safetensors")
    meta = learnq.load(tmp_path / "m.safetensors").metadata[ACTIVATIONS_KEY]
    assert list(meta["modules"]) == names
    rec = meta["modules"][names[0]]
    assert rec["method"] == method and rec["bits"] == 3
    if method == "pact":
        assert rec["clip"] == model.get_submodule(names[0]).quantizer.clip.item()
    else:
        q = model.get_submodule(names[0]).quantizer
        assert rec["range"] == [q.running_min.item(), q.running_max.item()] and rec["observed"] is True
    torch.manual_seed(1)
    fresh = learnq.load(tmp_path / "m.safetensors", build())
    assert [type(fresh.get_submodule(n)) for n in names] == [QuantizedActivation] * len(names)
    fresh.eval()
    probe = torch.randn(9, 1, 3, 4) * 3
    with torch.no_grad():
        assert torch.equal(fresh(probe), model(probe))


def test_load_refuses_a_network_without_the_recorded_activation(tmp_path):
    import learnq
    from learnq.errors import CheckpointError

    model = mlp()
    insert_activation_quantizers(model, bits=4)
    learnq.save(model, tmp_path / "m.safetensors")
    other = mlp()
    other[4] = nn.ReLU()  # ReLU6 in the file
    with pytest.raises(CheckpointError, match="ReLU6"):
        learnq.load(tmp_path / "m.safetensors", other)
    with pytest.raises(CheckpointError, match="'4'"):
        learnq.load(tmp_path / "m.safetensors", nn.Sequential(*mlp()[:3]), strict=False)
    observer = mlp()
    insert_activation_quantizers(observer, bits=4, method="observer")
    with pytest.raises(CheckpointError, match="already wrapped"):  # wrapped with another quantizer than recorded
        learnq.load(tmp_path / "m.safetensors", observer)
    same = mlp()
    insert_activation_quantizers(same, bits=4)
    assert torch.equal(learnq.load(tmp_path / "m.safetensors", same)[2].quantizer.clip, model[2].quantizer.clip)


def test_wrapper_state_round_trip_without_a_file():
    from learnq.act import restore_wrappers, wrapper_state

    model = Net()
    insert_activation_quantizers(model, bits=5)
    with torch.no_grad():
        model.act.quantizer.clip.fill_(1.25)
    fresh = Net()
    assert restore_wrappers(fresh, wrapper_state(model)) == ["act", "block.1"]
    assert fresh.act.quantizer.clip.item() == 1.25 and fresh.block[1].quantizer.clip.item() == 6.0
    assert fresh.act.quantizer.bits == 5
    with pytest.raises(ConfigError, match="version"):
        restore_wrappers(Net(), {"modules": {}})
    with pytest.raises(ConfigError, match="malformed"):
        restore_wrappers(Net(), {"version": 1, "modules": {"act": {"method": "pact", "bits": 4,
                                                                    "activation": "ReLU"}}})
