"""QDrop: block reconstruction with randomly dropped activation quantization (Wei, Gong, Li, Liu & Yu 2022, "QDrop:
Randomly Dropping Quantization for Extremely Low-bit Post-Training Quantization", ICLR, arXiv:2203.05740, §3.3 and
Algorithm 1; on top of BRECQ, Li et al. 2021, §3-4; METHODS.md §7; seeds/002 Table 2A uses it as a PTQ method).

The weights of a *block* (a few consecutive layers) are rounded with AdaRound's learned up/down rounding
(:mod:`learnq.ptq.adaround`: the rectified sigmoid ``h(V)``, its regulariser and β schedule, reused, not restated)
by minimising the block's output error instead of one layer's:

    ‖f(x; W) - f̃(x̂; W̃, QDrop)‖² + λ Σ_layers Σ (1 - |2h(V) - 1|^β),

with ``f`` the float block on its float input ``x``, ``f̃`` the block with soft-rounded weights on the input ``x̂``
it receives in the model whose earlier blocks are already quantized (activation quantizers included), and *QDrop*:
during reconstruction every element of every activation quantizer in the block (learnq's input quantizers at the
layers' inputs, the block's own input included) is quantized with probability ``1 - drop_prob`` and left in float
otherwise, a fresh Bernoulli mask per forward (Eq. 8: ``u = where(mask, x, Q(x))``; ``drop_prob = 0.5``, the
paper's default). After reconstruction the rounding is hard and activations are always quantized.

Blocks (``block_of``): in an ``nn.Sequential`` each conv/linear layer starts a block that takes the parameter-free
modules after it (ReLU, pooling, flatten...) up to the next layer (those before a container's first layer join it);
any other child container holding a selected layer (a residual block) is one block; a conv/linear child of a module
that is not a Sequential is a block alone. A block with no selected weight is left in float. Order of the method:
activation quantizers are attached and calibrated on the float model first (they take part in the
reconstruction), then blocks are reconstructed in definition order; each rounded weight is frozen into a
:class:`learnq.quantized.QuantizedWeight` (method ``"qdrop"``), bias-corrected when asked. The paper's defaults are
20,000 iterations per block (batch 32); here 1,000 (option ``iterations``), AdaRound's λ, β and warm-up.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from learnq.act import ActQuantizer
from learnq.clipping import choose_clip
from learnq.errors import ConfigError, ModelError
from learnq.grid import GridSpec, QuantizedTensor, compute_params
from learnq.layers import LAYER_TYPES
from learnq.parametrization import register
from learnq.ptq.adaround import (
    _soft_weight,
    beta_schedule,
    inverse_rectified_sigmoid,
    rectified_sigmoid,
    rounding_regularizer,
)
from learnq.ptq.context import PTQContext, PTQMethod
from learnq.ptq.reconstruction import LayerByLayer, _Stop, run_until_stop
from learnq.quantized import get_module, split_name

_LAYERS = LAYER_TYPES["conv"] + LAYER_TYPES["linear"]


@dataclass
class QDropInfo:
    """One block: its modules, its output error (mean per sample on the calibration set, activations quantized)
    with nearest rounding and with the learned rounding, and how many weights were rounded against nearest."""

    block: list[str]
    nearest_error: float
    qdrop_error: float
    flipped: int
    numel: int


class DropQuant(nn.Module):
    """QDrop's activation: ``where(mask, x, Q(x))`` with ``mask ~ Bernoulli(drop_prob)`` per element (the
    quantizer ``q``'s straight-through forward where it quantizes)."""

    def __init__(self, q: nn.Module, drop_prob: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.q, self.drop_prob, self.generator = q, float(drop_prob), generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.q(x)
        if self.drop_prob <= 0:
            return y
        mask = torch.rand(x.shape, generator=self.generator, device="cpu").to(x.device) < self.drop_prob
        return torch.where(mask, x, y)


def block_of(model: nn.Module) -> list[list[str]]:
    """The model's blocks (module docstring), each a list of module names executed one after the other."""
    blocks: list[list[str]] = []

    def visit(prefix: str, module: nn.Module) -> None:
        children = list(module.named_children())
        if isinstance(module, nn.Sequential):
            pending: list[str] = []
            current: list[str] | None = None
            for n, child in children:
                full = f"{prefix}{n}"
                if isinstance(child, _LAYERS):
                    current = pending + [full]
                    pending = []
                    blocks.append(current)
                elif any(isinstance(m, _LAYERS) for m in child.modules()):
                    current = None
                    if pending:
                        blocks.append(pending)  # parameter-free modules before a container: their own block
                        pending = []
                    blocks.append([full])
                elif current is not None:
                    current.append(full)
                else:
                    pending.append(full)
            if pending:
                blocks.append(pending)
            return
        for n, child in children:
            full = f"{prefix}{n}"
            if isinstance(child, _LAYERS):
                blocks.append([full])
            elif isinstance(child, nn.Sequential):
                visit(f"{full}.", child)
            elif any(isinstance(m, _LAYERS) for m in child.modules()):
                blocks.append([full])

    visit("", model)
    return blocks


@torch.no_grad()
def capture_block(model: nn.Module, first: nn.Module, last: nn.Module, inputs: torch.Tensor, *,
                  batch_size: int = 256, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The input of ``first`` (before any input quantizer on it) and the output of ``last`` on ``inputs``."""
    seen_in: list[torch.Tensor] = []
    seen_out: list[torch.Tensor] = []

    def pre(_m: nn.Module, args: tuple) -> None:
        seen_in.append(args[0].detach())

    def post(_m: nn.Module, _args: tuple, output: torch.Tensor) -> None:
        seen_out.append(output.detach())
        raise _Stop

    handles = [first.register_forward_pre_hook(pre, prepend=True), last.register_forward_hook(post)]
    run_until_stop(model, inputs, handles, batch_size=batch_size, device=device)
    if not seen_in or len(seen_in) != len(seen_out):
        raise ModelError("a QDrop block is not called by the model's forward (or its first module's output does not "
                         "reach its last one); its input and output cannot be captured")
    return torch.cat(seen_in), torch.cat(seen_out)


class _Soft(nn.Module):
    """The soft-rounded weight of one layer during reconstruction (a temporary parametrization)."""

    def __init__(self, w: torch.Tensor, spec: GridSpec, alpha: torch.Tensor | None, name: str) -> None:
        super().__init__()
        g = spec.granularity
        self.params = compute_params(w, spec, clip=alpha, name=name)
        self.scale, self.offset = g.expand(self.params.scale, w.shape), g.expand(self.params.offset, w.shape)
        self.qmin, self.qmax = spec.qrange()
        scaled = (w - self.offset) / self.scale
        self.floor, self.nearest = torch.floor(scaled), torch.clamp(torch.round(scaled), self.qmin, self.qmax)
        self.v = nn.Parameter(inverse_rectified_sigmoid(scaled - self.floor))
        self.hard: torch.Tensor | None = None  # codes, when set: the forward is the hard-rounded weight

    def codes(self) -> torch.Tensor:
        return torch.clamp(self.floor + (self.v >= 0).float(), self.qmin, self.qmax)

    def forward(self, _w: torch.Tensor) -> torch.Tensor:
        if self.hard is not None:
            return self.hard * self.scale + self.offset
        return _soft_weight(self.floor, rectified_sigmoid(self.v), self.scale, self.offset, self.qmin, self.qmax)


def _block_error(block: nn.Module, x: torch.Tensor, target: torch.Tensor) -> float:
    with torch.no_grad():
        total = sum(float((block(x[i:i + 256]) - target[i:i + 256]).pow(2).reshape(min(256, x.shape[0] - i), -1)
                          .sum()) for i in range(0, x.shape[0], 256))
    return total / x.shape[0]


def reconstruct_block(model: nn.Module, float_model: nn.Module, names: list[str], weights: list[str],
                      spec: GridSpec, calib: torch.Tensor, *, clip: str = "mse", drop_prob: float = 0.5,
                      iterations: int = 1000, lr: float = 1e-2, reg_weight: float = 0.01,
                      beta_range: tuple[float, float] = (20.0, 2.0), warmup: float = 0.2, batch_size: int = 32,
                      seed: int = 0, device: str | torch.device = "cpu",
                      ) -> tuple[dict[str, QuantizedTensor], QDropInfo]:
    """Learn the rounding of ``weights`` (names of layer weights inside the block ``names`` of ``model``) on the
    block's output error with QDrop; returns ``{weight name: QuantizedTensor}`` (not attached yet) and the info."""
    mods = [get_module(model, n) for n in names]
    block = mods[0] if len(mods) == 1 else nn.Sequential(*mods)
    x_fp, target = capture_block(float_model, get_module(float_model, names[0]), get_module(float_model, names[-1]),
                                 calib, device=device)
    x_q, _ = capture_block(model, mods[0], mods[-1], calib, device=device)
    softs: dict[str, _Soft] = {}
    for name in weights:
        module_name, _ = split_name(name)
        layer = get_module(model, module_name)
        w = layer.weight.detach().float()
        alpha = None if clip == "minmax" else choose_clip(w, spec, clip)
        softs[name] = _Soft(w, spec, alpha, name).to(w.device)
        register(layer, "weight", softs[name])
    gen = torch.Generator(device="cpu").manual_seed(seed)
    quantizers = [(m, m.input_quantizer) for m in block.modules() if isinstance(getattr(m, "input_quantizer", None),
                                                                                 ActQuantizer)]
    try:
        for s in softs.values():
            s.hard = s.nearest
        nearest_error = _block_error(block, x_q, target)
        for s in softs.values():
            s.hard = None
        for m, q in quantizers:
            m.input_quantizer = DropQuant(q, drop_prob, gen)
        opt = torch.optim.Adam([s.v for s in softs.values()], lr=lr)
        n = x_q.shape[0]
        for step in range(iterations):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
            out = block(x_q[idx.to(x_q.device)])
            loss = (out - target[idx.to(target.device)]).pow(2).reshape(out.shape[0], -1).sum(dim=1).mean()
            beta = beta_schedule(step, iterations, warmup=warmup, start=beta_range[0], end=beta_range[1])
            if beta is not None and reg_weight > 0:
                loss = loss + reg_weight * sum(rounding_regularizer(rectified_sigmoid(s.v), beta)
                                               for s in softs.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for m, q in quantizers:
            m.input_quantizer = q
        for s in softs.values():
            s.hard = s.codes().detach()
        qdrop_error = _block_error(block, x_q, target)
    finally:
        for m, q in quantizers:
            m.input_quantizer = q
        for name in softs:
            parametrize.remove_parametrizations(get_module(model, split_name(name)[0]), "weight",
                                                leave_parametrized=False)
    qmin, _ = spec.qrange()
    out_q = {name: QuantizedTensor(codes=s.codes().detach().to(torch.int32), scale=s.params.scale,
                                   offset=s.params.offset, granularity=spec.granularity, bits=spec.bits, qmin=qmin,
                                   scheme=spec.scheme, method="qdrop", dtype=get_module(model, split_name(name)[0])
                                   .weight.dtype) for name, s in softs.items()}
    info = QDropInfo(block=list(names), nearest_error=nearest_error, qdrop_error=qdrop_error,
                     flipped=sum(int((s.codes() != s.nearest).sum()) for s in softs.values()),
                     numel=sum(s.v.numel() for s in softs.values()))
    return out_q, info


OPTIONS: dict[str, Any] = {"iterations": 1000, "drop_prob": 0.5, "lr": 1e-2, "reg_weight": 0.01, "beta_start": 20.0,
                           "beta_end": 2.0, "warmup": 0.2, "round_batch_size": 32, "clip": "mse", "act_clip": "mse"}


def _qdrop_method(ctx: PTQContext) -> dict[str, Any]:
    """The ``qdrop`` PTQ method: input quantizers first (α by ``act_clip``, observed on the float model), then
    block reconstruction with QDrop of the selected weights."""
    opts = ctx.options
    if not 0.0 <= opts["drop_prob"] <= 1.0:
        raise ConfigError(f"QDrop drop_prob must be a probability in [0, 1], got {opts['drop_prob']!r}")
    if ctx.wspec is None:
        ctx.attach_activations(clip=opts["act_clip"])
        return {"qdrop": []}
    # the float copy is taken before the input quantizers go on: the targets are the float model's
    run = LayerByLayer(ctx.model, ctx.inputs, "QDrop", selection=ctx.selection,
                       bias_correction=ctx.bias_correction, variance_correction=ctx.variance_correction,
                       device=ctx.device, progress=ctx.progress)
    ctx.attach_activations(clip=opts["act_clip"])
    for block in run.blocks(block_of(ctx.model), hint="put these layers in an nn.Sequential or a child module of "
                            "the model"):
        run.attach_block(block, *reconstruct_block(
            ctx.model, run.float_model, block.modules, [layer.name for layer in block.layers], ctx.wspec,
            ctx.inputs, clip=opts["clip"], drop_prob=opts["drop_prob"], iterations=opts["iterations"], lr=opts["lr"],
            reg_weight=opts["reg_weight"], beta_range=(opts["beta_start"], opts["beta_end"]), warmup=opts["warmup"],
            batch_size=opts["round_batch_size"], seed=ctx.seed + block.index, device=ctx.device))
    ctx.record_weights(run.attached)
    return {"qdrop": [asdict(info) for info in run.infos.values()]}


METHOD = PTQMethod("qdrop", "QDrop (Wei et al. 2022): block reconstruction with randomly dropped activation "
                   "quantization", _qdrop_method, options=OPTIONS, quick={"iterations": 20})


__all__ = ["METHOD", "OPTIONS", "DropQuant", "QDropInfo", "block_of", "capture_block", "reconstruct_block"]
