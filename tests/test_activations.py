"""Activation quantizers (learnq.activations): PACT values and gradients by hand (Choi et al. 2018, Eq. 1-3), the
observer's running range, and inserting quantizers after ReLU/ReLU6 modules."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from learnq.activations import PACT, ObserverFakeQuant, QuantizedActivation, insert_activation_quantizers
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
