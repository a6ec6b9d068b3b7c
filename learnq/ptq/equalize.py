"""Cross-layer equalization and high-bias absorption (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction", ICCV, arXiv:1906.04721, §4.1 Eq. 6-11 and §4.1.1 Eq. 13-14; METHODS.md §7).
Not one of seeds/ (document 000 uses it in Table 1 as "DFQ"): the formulas are the paper's, written from its text.

**Pairs.** Two layers ``W1 -> [ReLU] -> W2`` whose channel ``i`` (output channel of W1, input channel of W2)
passes only through positively homogeneous per-channel operations: ReLU (``f(s·x) = s·f(x)`` for ``s > 0``),
identity (a folded BatchNorm), dropout, max / average pooling, and ``Flatten`` before a dense layer (channel ``i``
then feeds the columns ``i·k .. i·k+k-1`` of W2). W2 may be grouped (depthwise → pointwise and pointwise →
depthwise, as in MobileNet). Found by ``torch.fx`` tracing of the (BatchNorm-folded) model: every link of the chain
has one user, each layer is called once and holds its own weights (no tied parameter).

**Through ReLU6.** ReLU6 is not positively homogeneous: §4.1 relaxes Eq. 3 for piece-wise linear activations to
``f(s·x) = s·f̂(x)`` with the kinks moved to ``c/s`` (a ReLU6 becomes a clip at ``6/s_i`` per channel), and the
paper's experiments replace ReLU6 by ReLU (§5); both change the network, and learnq does not (a model file rebuilds
the network it was given). learnq uses the third reading that is exact on the data the BatchNorm statistics
describe: with the pre-activation of channel i ``N(β_i, γ_i²)`` and its upper bound ``u_i = β_i + 3γ_i`` (the
same 3σ rule as the high-bias absorption), ``s_i·relu6(z/s_i) = clip(z, 0, 6·s_i)`` equals ``relu6(z)`` for every
``z ≤ min(6, 6·s_i)``. So a channel whose clip never binds (``u_i ≤ 6``) is equalized with ``s_i`` raised to at
least ``u_i / 6`` (its clip stays above its range); a channel whose clip binds (``u_i > 6``) keeps ``s_i = 1``, and
a ReLU6 pair whose first layer has no BatchNorm statistics is not equalized. ``equalize`` reports, per ReLU6 pair,
how many channels were held at 1 and which pairs were left alone, and why. Like the absorption's 3σ rule this is
an approximation on real data, whose tails pass β + 3γ: on MobileNetV2-small (mnist5k) the float logits move by
up to 2.7 (of 22.8) and the float accuracy stays 97.6 / 97.4-97.5 % (``benchmarks/relu6_cle_check.py``).

**Equalization (Eq. 10-11).** With ``r1_i`` the range ``max|W1[i]|`` of output channel i of W1 and ``r2_i`` that
of input channel i of W2, ``s_i = sqrt(r1_i · r2_i) / r2_i``; then ``W1[i] ← W1[i]/s_i``, ``b1_i ← b1_i/s_i``,
``W2[:, i] ← W2[:, i]·s_i``: both ranges become ``sqrt(r1_i·r2_i)`` and the float function is unchanged. Chains of
layers are equalized pair by pair, sweeping over all pairs until no scale moves more than ``tol`` (in log).

**High-bias absorption (Eq. 13-14).** When the pre-activation of W1's channel i is known to be ``N(β_i, γ_i²)``
(from the BatchNorm folded into W1, recorded before folding as ``ctx.bn_stats``), ``c_i = max(0, β_i - 3γ_i)`` is
moved from b1 into the next layer: ``b1 ← b1 - c``, ``b2 ← b2 + W2·c`` (summed over W2's kernel). Exact except for
the inputs below ``c`` (the 0.13 % of a normal below β - 3γ) and at W2's zero-padded border, as in the paper. Done
through ReLU, and through ReLU6 on the channels whose clip never binds (``u_i ≤ 6``: then ``relu6(z - c) + c =
relu6(z)`` for ``c ≤ z ≤ 6``), and only when W2 has a bias (no bias is added to a layer: the model file keeps the
network).

``equalize(ctx)`` runs both on ``ctx.model`` in place and updates ``ctx.bn_stats`` (scaled and shifted like the
channels) for DFQ's bias correction (:mod:`learnq.ptq.dfq`); ``learnq.PTQ(equalize=True)`` / ``learnq quantize
--equalize`` run it before any PTQ method.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from learnq.fx_trace import LeafTracer

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
          nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_MAXPOOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
             nn.AdaptiveMaxPool3d)
_IDENTITY = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


@dataclass
class Pair:
    """Two layers joined channel by channel. ``act``: "relu", "relu6" or "none"; ``maxpool``: a max pooling on the
    way (the mean of the activation is then unknown); ``flatten``: W2 is a dense layer after a Flatten."""

    first: str
    second: str
    act: str
    maxpool: bool
    flatten: bool


def _leaf(m: nn.Module) -> bool:
    """The trace keeps every conv/linear layer (subclasses too) as one ``call_module`` node."""
    return isinstance(m, _LAYERS)


def _link(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """What a node does to channels: "relu", "relu6", "maxpool", "pass", "flatten", or None (not a link)."""
    if node.op == "call_module":
        m = modules[str(node.target)]
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, nn.ReLU6) or (isinstance(m, nn.Hardtanh) and m.min_val == 0.0 and m.max_val == 6.0):
            return "relu6"
        if isinstance(m, _MAXPOOLS):
            return "maxpool"
        if isinstance(m, _POOLS + _IDENTITY):
            return "pass"
        if isinstance(m, nn.Flatten):
            return "flatten" if m.start_dim == 1 and m.end_dim == -1 else None
        return None
    if node.op == "call_function":
        if node.target in (F.relu, torch.relu) and not node.kwargs.get("inplace", False):
            return "relu"
        if node.target is F.relu6:
            return "relu6"
        if node.target is torch.flatten and node.args[1:2] == (1,) and len(node.args) <= 2 and not node.kwargs:
            return "flatten"
    if node.op == "call_method" and node.target == "relu":
        return "relu"
    return None


def _channels_in(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _channels_out(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def find_pairs(model: nn.Module) -> list[Pair]:
    """Every equalizable pair of ``model`` (module docstring), in graph order; a ``UserWarning`` and no pairs when
    ``torch.fx`` cannot trace the model."""
    try:
        graph = LeafTracer(_leaf).trace(model)
    except Exception as exc:  # any tracing failure: say so, equalize nothing
        warnings.warn(f"cross-layer equalization: torch.fx could not trace {type(model).__name__} "
                      f"({type(exc).__name__}: {exc}); no layer pair is equalized", UserWarning, stacklevel=3)
        return []
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[str(node.target)], _LAYERS):
            continue
        first = modules[str(node.target)]
        kinds: list[str] = []
        cur = node
        while len(cur.users) == 1:
            nxt = next(iter(cur.users))
            if nxt.op == "call_module" and isinstance(modules[str(nxt.target)], _LAYERS):
                second = modules[str(nxt.target)]
                if _compatible(first, second, "flatten" in kinds) and calls[str(node.target)] == 1 \
                        and calls[str(nxt.target)] == 1 and nxt.args[0] is cur:
                    acts = [k for k in kinds if k in ("relu", "relu6")]
                    if len(acts) <= 1:
                        pairs.append(Pair(str(node.target), str(nxt.target), acts[0] if acts else "none",
                                          "maxpool" in kinds, "flatten" in kinds))
                break
            kind = _link(nxt, modules)
            if kind is None or nxt.args[0] is not cur:
                break
            kinds.append(kind)
            cur = nxt
    return pairs


def _compatible(first: nn.Module, second: nn.Module, flatten: bool) -> bool:
    c = _channels_out(first)
    if isinstance(second, nn.Linear):
        if isinstance(first, nn.Linear):
            return second.in_features == c
        return flatten and second.in_features % c == 0
    return not isinstance(first, nn.Linear) and type(first) is type(second) and second.in_channels == c


def _in_view(second: nn.Module, channels: int) -> torch.Tensor:
    """W2 as (groups, out/groups, in/groups, k): input channel i = (group, index) of dims 0 and 2."""
    w = second.weight
    groups = 1 if isinstance(second, nn.Linear) else second.groups
    return w.reshape(groups, w.shape[0] // groups, channels // groups, -1)


def input_ranges(second: nn.Module, channels: int) -> torch.Tensor:
    """``r2_i = max |W2[:, i]|`` per input channel i (over every output and kernel position it feeds)."""
    return _in_view(second, channels).detach().abs().amax(dim=(1, 3)).reshape(channels)


def output_ranges(first: nn.Module) -> torch.Tensor:
    """``r1_i = max |W1[i]|`` per output channel."""
    return first.weight.detach().abs().reshape(first.weight.shape[0], -1).amax(dim=1)


def input_sum(second: nn.Module, channels: int, vec: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_{i,k} W2[o, i, k] · vec_i`` per output channel o (what a constant ``vec_i`` on input channel i adds to
    W2's output), with ``weight`` in place of W2's weight when given (e.g. a weight error ΔW)."""
    w = second.weight if weight is None else weight
    groups = 1 if isinstance(second, nn.Linear) else second.groups
    view = w.detach().reshape(groups, w.shape[0] // groups, channels // groups, -1).sum(dim=3)
    return (view * vec.to(view).reshape(groups, 1, channels // groups)).sum(dim=2).reshape(w.shape[0])


RELU6_CLIP = 6.0
#: ``u <= 6·(1 + 1e-9)`` counts as "the clip never binds": a channel raised to ``s = u/6`` has ``u/s = 6`` up to
#: rounding in the next sweep
_SLACK = 1.0 + 1e-9


def relu6_upper(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``u = β + 3γ``: the upper bound of a ReLU6 input ``N(β, γ²)`` below which its clip at 6 never binds."""
    return mean.double() + 3.0 * std.double()


@torch.no_grad()
def equalize_pair(model: nn.Module, pair: Pair, upper: torch.Tensor | None = None) -> torch.Tensor:
    """Equalize one pair in place (Eq. 10-11); returns the scales ``s`` (1 where a channel is all zero).

    ``upper`` (ReLU6 pairs): each channel's pre-activation bound ``u_i`` (:func:`relu6_upper`); channels with
    ``u_i > 6`` keep ``s_i = 1`` and the others get ``s_i >= u_i / 6`` (module docstring, "Through ReLU6")."""
    first, second = model.get_submodule(pair.first), model.get_submodule(pair.second)
    c = _channels_out(first)
    r1, r2 = output_ranges(first).double(), input_ranges(second, c).double()
    ok = (r1 > 0) & (r2 > 0)
    s = torch.where(ok, torch.sqrt(r1 * r2) / torch.where(ok, r2, torch.ones_like(r2)), torch.ones_like(r1))
    if upper is not None:
        u = upper.double().to(s.device)
        s = torch.where(u <= RELU6_CLIP * _SLACK, torch.maximum(s, u / RELU6_CLIP), torch.ones_like(s))
    shape = (-1,) + (1,) * (first.weight.dim() - 1)
    first.weight.copy_((first.weight.double() / s.reshape(shape)).to(first.weight.dtype))
    if first.bias is not None:
        first.bias.copy_((first.bias.double() / s).to(first.bias.dtype))
    view = _in_view(second, c)
    groups = view.shape[0]
    view.copy_((view.double() * s.reshape(groups, 1, c // groups, 1)).to(view.dtype))
    return s.to(first.weight.dtype)


@torch.no_grad()
def absorb_high_bias(model: nn.Module, pair: Pair, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Eq. 13-14 on one ReLU pair: ``c = max(0, β - 3γ)``, ``b1 -= c``, ``b2 += W2·c``; returns ``c``. On a ReLU6
    pair only the channels whose clip never binds (``β + 3γ <= 6``) give up their ``c``."""
    first, second = model.get_submodule(pair.first), model.get_submodule(pair.second)
    c = torch.clamp(mean - 3 * std, min=0)
    if pair.act == "relu6":
        c = torch.where(relu6_upper(mean, std) <= RELU6_CLIP * _SLACK, c, torch.zeros_like(c))
    c = c.to(first.bias)
    first.bias.sub_(c)
    second.bias.add_(input_sum(second, _channels_out(first), c).to(second.bias))
    return c


def _free(model: nn.Module, name: str, uses: Counter) -> bool:
    """The layer's weights are plain and its own: not parametrized, not shared with another module (scaling a tied
    weight would change its other users)."""
    module = model.get_submodule(name)
    return not parametrize.is_parametrized(module) and all(
        uses[id(p)] == 1 for p in module.parameters(recurse=False))


def equalize(model: nn.Module, bn_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None, *,
             max_iter: int = 20, tol: float = 1e-4, absorb: bool = True) -> dict[str, Any]:
    """Cross-layer equalization of every pair of ``model`` (in place), then high-bias absorption where ``bn_stats``
    (``{layer: (mean, std)}`` of its pre-activation, updated in place) says where a ReLU input stays positive.

    Returns what was done: the pairs, the sweeps run, and the total bias absorbed per pair.
    """
    from learnq.errors import ConfigError

    if not isinstance(max_iter, int) or max_iter < 1 or not tol > 0:
        raise ConfigError("equalize needs max_iter >= 1 (integer) and tol > 0")
    stats = bn_stats if bn_stats is not None else {}
    uses = Counter(id(p) for m in model.modules() for p in m.parameters(recurse=False))
    pairs, left = [], {}
    for p in find_pairs(model):
        if not (_free(model, p.first, uses) and _free(model, p.second, uses)):
            continue
        if p.act == "relu6" and p.first not in stats:
            left[f"{p.first}->{p.second}"] = ("ReLU6 without the first layer's BatchNorm statistics: where its clip "
                                              "binds is unknown, so scaling could change the network")
            continue
        pairs.append(p)
    held = {f"{p.first}->{p.second}": int((relu6_upper(*stats[p.first]) > RELU6_CLIP * _SLACK).sum())
            for p in pairs if p.act == "relu6"}
    sweeps = 0
    for sweeps in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        moved = 0.0
        for pair in pairs:
            upper = relu6_upper(*stats[pair.first]) if pair.act == "relu6" else None
            s = equalize_pair(model, pair, upper)
            moved = max(moved, float(s.double().log().abs().max()))
            if pair.first in stats:
                mean, std = stats[pair.first]
                stats[pair.first] = (mean / s.to(mean), std / s.to(std))
        if moved < tol:
            break
    absorbed = {}
    if absorb:
        for pair in pairs:
            first, second = model.get_submodule(pair.first), model.get_submodule(pair.second)
            if pair.act in ("relu", "relu6") and pair.first in stats and first.bias is not None \
                    and second.bias is not None:
                mean, std = stats[pair.first]
                c = absorb_high_bias(model, pair, mean, std)
                stats[pair.first] = (mean - c.to(mean), std)
                absorbed[f"{pair.first}->{pair.second}"] = float(c.sum())
    return {"pairs": [f"{p.first}->{p.second}" for p in pairs], "sweeps": sweeps if pairs else 0,
            "absorbed": absorbed, "relu6_channels_held": held, "left_alone": left}


__all__ = ["RELU6_CLIP", "Pair", "absorb_high_bias", "equalize", "equalize_pair", "find_pairs", "input_ranges",
           "input_sum", "output_ranges", "relu6_upper"]
