"""GPTQ: one-shot weight rounding with second-order error compensation (Frantar, Ashkboos, Hoefler & Alistarh 2023,
"GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers", ICLR, arXiv:2210.17323, §3 and
Algorithm 1; METHODS.md §7). Not one of seeds/: the formulas are the paper's, written from its text.

One layer at a time, with ``W`` its weight as a matrix (out, columns) (a convolution's as (out, in·kh·kw), the
column order of ``F.unfold``; one matrix per group of a grouped convolution) and ``X`` its calibration inputs as
columns (one per sample and output position), minimise ``‖W X - Ŵ X‖²`` row by row. The Hessian of that objective
is ``H = 2 X Xᵀ / n`` (§3, Eq. 1; divided by the number of columns n), dampened ``H += δ·I`` with ``δ = damp ·
mean(diag H)`` (§3 "Step 3", default 1 %). With ``U`` the upper Cholesky factor of ``H⁻¹`` (``H⁻¹ = UᵀU``), the
columns are quantized left to right (Algorithm 1):

    q_j = Q(w_j),     e_j = (w_j - q_j) / U_jj,     W[:, k] -= e_j · U_jk   for k > j,

which is the OBS update (§2 Eq. 2, ``δ_F = -(w_q - quant(w_q))/[H_F⁻¹]_qq · (H_F⁻¹)_{:,q}``) with ``H_F⁻¹`` the
inverse Hessian of the columns not yet quantized: row j of U is ``(H_F⁻¹)_{j,:} / sqrt([H_F⁻¹]_jj)``. Updates to
columns after the current block of ``block_size`` columns are applied once per block (§3 "Step 2: lazy batch
updates", ``W[:, i2:] -= E · U[i1:i2, i2:]``), which gives the same result in fewer memory passes.

Grids: the per-tensor and per-output-channel steps are chosen once from the float weight by the clipping rule
``clip`` (default ``"minmax"``, the paper's; ``"mse"`` or any rule of :mod:`learnq.clipping`); a ``group:G`` grid (G
must divide the number of columns) chooses each group's step when its first column is reached, from the weights as
updated so far (§4 "grouping"). ``act_order=True`` quantizes the columns in order of decreasing ``diag H`` (the
paper's "act-order" heuristic); with a group grid the group steps are then chosen up front from the float weight
("static groups"), so that every group keeps contiguous columns. Columns whose input is always 0 (``diag H = 0``)
get ``H_jj = 1`` and are rounded to nearest without moving other columns.

The registered method ``gptq`` quantizes the selected layers in definition order, each on the inputs it receives
from the model whose earlier layers are already quantized (``inputs="quantized"``; ``"float"``: from the float
model), freezes each into a :class:`learnq.quantized.QuantizedWeight` (method ``"gptq"``), applies bias correction
when asked (:func:`learnq.ptq.bias_correction.correct_quantized`), then attaches input quantizers calibrated on the
quantized model (α by option ``act_clip``). The bias is not touched.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import ThreadpoolController
from torch import nn

from learnq.attach import Selection
from learnq.clipping import choose_clip
from learnq.errors import ConfigError, ModelError, QuantizationError
from learnq.granularity import CHANNEL
from learnq.grid import GridSpec, QuantizedTensor, compute_params
from learnq.ptq.context import PTQContext, PTQMethod
from learnq.ptq.layer_inputs import LayerInputs
from learnq.ptq.reconstruction import LayerByLayer, Observers, for_each_input, run_reconstruction
from learnq.quantized import get_module, split_name


@dataclass
class GPTQInfo:
    """One layer: its output error (mean squared error per output value on the calibration inputs, from ``H``)
    with round-to-nearest on the same grid and with GPTQ."""

    name: str
    nearest_error: float
    gptq_error: float
    columns: int
    damp: float


# -- the Hessian ---------------------------------------------------------------------------------------------------
def input_columns(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The layer's inputs as rows of its weight-matrix columns: one ``(n, columns)`` matrix per group of a grouped
    convolution (one for a linear layer), so that ``W_g @ rows.T`` is the layer's output without bias."""
    if isinstance(module, nn.Linear):
        return [x.reshape(-1, x.shape[-1])]
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        rows = patch_rows(module, x)  # (C·kh·kw, N·L), channel-major like the weight
        per = rows.shape[0] // module.groups
        return [rows[g * per:(g + 1) * per].T for g in range(module.groups)]
    raise ModelError(f"GPTQ works on nn.Linear, nn.Conv1d and nn.Conv2d layers, not {type(module).__name__}")


def patch_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A convolution's input patches as the rows of a ``(in·kh·kw, N·L)`` matrix: row order = the weight matrix's
    column order (channel-major, then kernel row and column), column order = sample, then output position (that of
    ``F.unfold``'s patches). The patches are a strided view of the padded input (``Tensor.unfold``, dilation by
    slicing), copied once into this layout, so that ``X Xᵀ`` is one matrix product."""
    two = isinstance(module, nn.Conv2d)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    if not two:
        x = x.unsqueeze(-2)
    kh, kw = module.kernel_size if two else (1, module.kernel_size[0])
    sh, sw = module.stride if two else (1, module.stride[0])
    dh, dw = module.dilation if two else (1, module.dilation[0])
    v = x.unfold(2, (kh - 1) * dh + 1, sh).unfold(3, (kw - 1) * dw + 1, sw)[..., ::dh, ::dw]  # N, C, H', W', kh, kw
    return v.permute(1, 4, 5, 0, 2, 3).reshape(x.shape[1] * kh * kw, -1)


def _gram(a: torch.Tensor) -> torch.Tensor:
    """``a aᵀ``. On the CPU through numpy, whose ``a @ a.T`` is one BLAS ``syrk`` (half a matrix product's
    multiplications; 1.5x faster than torch's product for LeNet's conv2, 150 x 50,176, on one AVX-512 core); torch's
    product elsewhere. Symmetric either way; the float32 sums' rounding differs between the two."""
    if a.device.type != "cpu":
        return a @ a.T
    b = a.contiguous().numpy()
    with _blas_threads().limit(limits=torch.get_num_threads(), user_api="blas"):  # torch's thread count rules
        return torch.from_numpy(b @ b.T)


@functools.cache
def _blas_threads() -> ThreadpoolController:
    """numpy's BLAS thread pool (found once: inspecting the loaded libraries takes milliseconds, a limit 10 µs)."""
    return ThreadpoolController()


class HessianSum:
    """``Σ X_g X_gᵀ`` per convolution group, accumulated batch by batch: each batch's product in the input's
    precision (one matrix product of the patches laid out as rows, :func:`patch_rows`), the running sum in float64,
    so that many batches add up without float32 rounding; :meth:`result` gives ``H_g = 2 Σ X_g X_gᵀ / n``
    (float32)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.sums: list[torch.Tensor] | None = None
        self.n = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        columns = input_columns(self.module, x.float())  # per group (n, columns); a conv's are patch_rows' .T
        parts = [_gram(c.T) for c in columns]
        n = columns[0].shape[0]
        if self.sums is None:
            self.sums = [p.double() for p in parts]
        else:
            for acc, p in zip(self.sums, parts, strict=True):
                acc.add_(p.double())
        self.n += n

    def result(self) -> tuple[list[torch.Tensor], int]:
        if self.sums is None or self.n == 0:
            raise ModelError("GPTQ needs calibration inputs for every layer; none reached this one")
        return [(h * (2.0 / self.n)).float() for h in self.sums], self.n


def layer_hessians(module: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> tuple[list[torch.Tensor], int]:
    """``H_g = 2 X_g X_gᵀ / n`` per convolution group (accumulated over batches of ``x``, :class:`HessianSum`)
    and ``n``."""
    acc = HessianSum(module)
    for i in range(0, x.shape[0], batch_size):
        acc.add(x[i:i + batch_size])
    return acc.result()


# -- the algorithm -------------------------------------------------------------------------------------------------
def inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + δI)⁻¹``, ``δ = damp·mean(diag H)``; dead columns get ``H_jj = 1``.

    One Cholesky factorization, in float64: with ``J`` the order reversal and ``J H J = L Lᵀ``, ``H⁻¹ = UᵀU`` for
    the upper triangular ``U = J L⁻¹ J`` (the factor is unique), so no explicit inverse is formed. Returned in
    ``h``'s dtype."""
    dtype = h.dtype
    h = h.double().clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    low, info = torch.linalg.cholesky_ex(h.flip(0, 1))
    if int(info) != 0:
        raise QuantizationError(f"GPTQ: the dampened Hessian is not positive definite (damp={damp}); raise the "
                                "option damp (e.g. 0.1)")
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    inv_low = torch.linalg.solve_triangular(low, eye, upper=False)
    return inv_low.flip(0, 1).to(dtype)


def _round(x: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    qmin, qmax = spec.qrange()
    return (torch.floor(x) if spec.rounding == "floor" else torch.round(x)).clamp_(qmin, qmax)


def _numpy_loop(w: torch.Tensor) -> bool:
    """Whether :func:`gptq_matrix` runs its column loop on numpy views of ``w`` (a float32/float64 CPU tensor)."""
    return w.device.type == "cpu" and w.dtype in (torch.float32, torch.float64)


def _clamp_numpy(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``x`` clamped to [lo, hi] in place by two ufuncs (``np.clip``'s Python wrapper costs more than both)."""
    return np.minimum(np.maximum(x, lo, out=x), hi, out=x)


def gptq_matrix(w: torch.Tensor, u: torch.Tensor, spec: GridSpec, scale: torch.Tensor, offset: torch.Tensor, *,
                block_size: int = 128, group_size: int = 0, clip: str = "minmax", group_params: bool = False,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ on one matrix ``w`` (out, cols) with ``u`` the upper Cholesky factor of ``H⁻¹`` (columns already in the
    processing order). ``scale``/``offset`` (out, cols): each element's step and offset; with ``group_params`` the
    step of every ``group_size`` columns is chosen (rule ``clip``) when the group starts and written into them.

    Returns ``(codes, errors, scale, offset)``: codes (out, cols) as floats, the scaled errors ``e_j`` of every
    column (out, cols), and the steps and offsets used.
    """
    w = w.detach().clone()  # detached: the loop works on numpy views of CPU tensors
    u = u.detach().to(w.dtype)
    cols = w.shape[1]
    codes = torch.zeros_like(w)
    errors = torch.zeros_like(w)
    scale, offset = scale.detach().clone(), offset.detach().clone()
    row_spec = replace(spec, granularity=CHANNEL)
    qmin, qmax = spec.qrange()
    # the column loop on numpy views of CPU tensors (same memory): ~1 µs per operation against torch's ~5 µs, and
    # numpy's float32 elementwise operations round as torch's (the same values bit for bit, tested); torch elsewhere
    host = _numpy_loop(w)
    rnd: Callable = ((np.floor if host else torch.floor) if spec.rounding == "floor" else
                     (np.rint if host else torch.round))
    clamp: Callable = _clamp_numpy if host else torch.Tensor.clamp_
    outer: Callable = np.multiply.outer if host else torch.outer
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        block = w[:, i1:i2].clone()
        err = errors[:, i1:i2]
        ub = u[i1:i2, i1:i2]
        views = (block, scale[:, i1:i2], offset[:, i1:i2], codes[:, i1:i2], err, ub)
        b, sc, off, cd, er, uu = (t.numpy() for t in views) if host else views
        for i in range(i2 - i1):
            j = i1 + i
            if group_params and j % group_size == 0:  # writes the group's steps into scale/offset (sc/off see them)
                now = torch.cat([block[:, i:], w[:, i2:]], dim=1)[:, :group_size]
                alpha = None if clip == "minmax" else choose_clip(now, row_spec, clip)
                p = compute_params(now, row_spec, clip=alpha, name="GPTQ group")
                scale[:, j:j + group_size] = p.scale[:, None]
                offset[:, j:j + group_size] = p.offset[:, None]
            col = b[:, i]
            q = clamp(rnd((col - off[:, i]) / sc[:, i]), qmin, qmax)  # in place
            cd[:, i] = q
            e = (col - (q * sc[:, i] + off[:, i])) / uu[i, i]
            b[:, i:] -= outer(e, uu[i, i:])  # the OBS update of the block's remaining columns
            er[:, i] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]  # the lazy batch update of the columns after the block
    return codes, errors, scale, offset


def _output_error(codes: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                  h: torch.Tensor) -> float:
    """``Σ_r dᵣᵀ (X Xᵀ/n) dᵣ`` with ``d = Ŵ - W``: the squared output error per output position (H = 2XXᵀ/n)."""
    d = codes * scale + offset - w
    return float(torch.einsum("rj,jk,rk->", d, h, d)) / 2.0


def gptq_weight(weight: torch.Tensor, hessians: list[torch.Tensor], spec: GridSpec, *, clip: str = "minmax",
                damp: float = 0.01, block_size: int = 128, act_order: bool = False,
                name: str = "weight") -> tuple[QuantizedTensor, GPTQInfo]:
    """Quantize one layer ``weight`` with GPTQ given its Hessians (one per convolution group, :func:`layer_hessians`).

    Returns the :class:`QuantizedTensor` (method ``"gptq"``, the grid's granularity) and a :class:`GPTQInfo`.
    """
    g = spec.granularity
    out_ch = weight.shape[0]
    w_all = weight.detach().float().reshape(out_ch, -1)
    groups = len(hessians)
    rows, cols = out_ch // groups, w_all.shape[1]
    if g.kind == "axis" and g.axis != 0 or g.kind == "group" and cols % g.group_size:
        raise ConfigError(f"GPTQ quantizes column by column: use granularity 'tensor', 'channel' or 'group:G' with G "
                          f"dividing the {cols} columns of {name} (in·kh·kw), not {g}")
    if not (0 <= damp and block_size >= 1):
        raise ConfigError(f"GPTQ needs damp >= 0 and block_size >= 1, got {damp!r} and {block_size!r}")
    dynamic = g.kind == "group" and not act_order
    if dynamic:
        scale_m, offset_m = torch.ones_like(w_all), torch.zeros_like(w_all)
    else:
        alpha = None if clip == "minmax" else choose_clip(weight.detach().float(), spec, clip)
        params = compute_params(weight.detach().float(), spec, clip=alpha, name=name)
        scale_m = g.expand(params.scale, weight.shape).reshape(out_ch, -1).float()
        offset_m = g.expand(params.offset, weight.shape).reshape(out_ch, -1).float()
    codes = torch.zeros_like(w_all)
    scale_out, offset_out = scale_m.clone(), offset_m.clone()
    nearest_err = gptq_err = 0.0
    for gi, h in enumerate(hessians):
        sl = slice(gi * rows, (gi + 1) * rows)
        perm = torch.argsort(torch.diagonal(h), descending=True) if act_order else torch.arange(cols, device=h.device)
        u = inverse_cholesky(h[perm][:, perm], damp)
        c, _, s, o = gptq_matrix(w_all[sl][:, perm], u, spec, scale_m[sl][:, perm], offset_m[sl][:, perm],
                                 block_size=block_size, group_size=g.group_size, clip=clip, group_params=dynamic)
        inv = torch.argsort(perm)
        codes[sl], scale_out[sl], offset_out[sl] = c[:, inv], s[:, inv], o[:, inv]
        nearest = _round((w_all[sl] - offset_out[sl]) / scale_out[sl], spec)
        nearest_err += _output_error(nearest, w_all[sl], scale_out[sl], offset_out[sl], h)
        gptq_err += _output_error(codes[sl], w_all[sl], scale_out[sl], offset_out[sl], h)
    qmin, _ = spec.qrange()
    if g.kind == "group":  # one step per G columns of each row: the flattened tensor's runs of G values
        scale, offset = scale_out[:, ::g.group_size].reshape(-1), offset_out[:, ::g.group_size].reshape(-1)
    else:
        scale, offset = params.scale, params.offset
    qt = QuantizedTensor(codes=codes.reshape(weight.shape).to(torch.int32), scale=scale.contiguous(),
                         offset=offset.contiguous(), granularity=g, bits=spec.bits, qmin=qmin, scheme=spec.scheme,
                         method="gptq", dtype=weight.dtype)
    per_value = max(1, out_ch)
    return qt, GPTQInfo(name=name, nearest_error=nearest_err / per_value, gptq_error=gptq_err / per_value,
                        columns=cols, damp=damp)


# -- the model -----------------------------------------------------------------------------------------------------
def gptq_weights(model: nn.Module, calib_inputs: torch.Tensor, spec: GridSpec, *, selection: Selection = Selection(),
                 clip: str = "minmax", damp: float = 0.01, block_size: int = 128, act_order: bool = False,
                 inputs: str = "quantized", bias_correction: bool = False, variance_correction: bool = False,
                 device: str | torch.device = "cpu", batch_size: int = 256, progress: bool = False,
                 observers: Observers | None = None) -> dict[str, GPTQInfo]:
    """Quantize the selected weights of ``model`` (in place, eval mode) with GPTQ, layer by layer in definition
    order; returns ``{name: GPTQInfo}``.

    Each layer's input is streamed batch by batch (one forward per batch, stopped at the layer) into its Hessian
    sum, never stored whole; ``observers`` (``{layer name: fn}``) also receive every batch of that layer's input as
    it is captured, e.g. an activation quantizer's ``observe``: with ``inputs="quantized"`` that is exactly what a
    calibration pass over the finished model would show it (the layers before it are already quantized, the
    layer itself and the ones after do not change its input), so the GPTQ method needs no calibration pass."""
    run = LayerByLayer(model, calib_inputs, "GPTQ", selection=selection, inputs=inputs, float_reference=False,
                       bias_correction=bias_correction, variance_correction=variance_correction, device=device,
                       progress=progress)
    source = run.source
    # one forward pass paused at each layer (learnq.ptq.layer_inputs), else one partial forward per layer
    stepper = LayerInputs.build(source, [split_name(n)[0] for n in run.names], calib_inputs,
                                batch_size=batch_size, device=device)
    steps = iter(stepper) if stepper is not None else None
    for layer in run:
        module_name = layer.module_name
        acc = HessianSum(layer.module)
        observe = (observers or {}).get(module_name)

        def take(x: torch.Tensor, acc: HessianSum = acc, observe: Callable | None = observe) -> None:
            if observe is not None:
                observe(x)
            acc.add(x)

        if steps is not None:
            for x in next(steps)[1]:
                take(x)
        else:
            for_each_input(source, get_module(source, module_name), calib_inputs, take, batch_size=batch_size,
                           device=device)
        hessians, _ = acc.result()
        run.attach(layer, *gptq_weight(layer.weight, hessians, spec, clip=clip, damp=damp, block_size=block_size,
                                       act_order=act_order, name=layer.name))
    return run.infos


OPTIONS: dict[str, Any] = {"damp": 0.01, "block_size": 128, "act_order": False, "clip": "minmax",
                           "inputs": "quantized", "act_clip": "mse"}


def _gptq_method(ctx: PTQContext) -> dict[str, Any]:
    """The ``gptq`` PTQ method: weights by :func:`gptq_weights`, then input quantizers (α by ``act_clip``)."""
    # stream: the input quantizers observe what GPTQ captures (no calibration pass)
    return run_reconstruction(ctx, "gptq", _weights, stream=True)


def _weights(ctx: PTQContext, observers: Observers | None) -> dict[str, GPTQInfo]:
    opts = ctx.options
    return gptq_weights(ctx.model, ctx.inputs, ctx.wspec, selection=ctx.selection, clip=opts["clip"],
                        damp=opts["damp"], block_size=opts["block_size"], act_order=opts["act_order"],
                        inputs=opts["inputs"], bias_correction=ctx.bias_correction,
                        variance_correction=ctx.variance_correction, device=ctx.device, batch_size=ctx.batch_size,
                        progress=ctx.progress, observers=observers)


METHOD = PTQMethod("gptq", "GPTQ (Frantar et al. 2023): column-by-column rounding with inverse-Hessian updates",
                   _gptq_method, options=OPTIONS)


__all__ = ["GPTQInfo", "HessianSum", "METHOD", "OPTIONS", "gptq_matrix", "gptq_weight", "gptq_weights", "input_columns",
           "inverse_cholesky", "layer_hessians", "patch_rows"]
