"""The typed, versioned config of post-training quantization (LAPQ seeds/001 §5 for the W/A bit configurations;
METHODS.md §2 and §6): what ``learnq.ptq.quantize`` applies, what ``learnq quantize`` and a recipe's PTQ variant
build, and what the quantized model's file records (metadata key ``"ptq_config"``, :mod:`learnq.fields.ptq_config`).

    config = learnq.PTQ(method="lapq", wbits=4, abits=4, granularity="tensor", options={"maxiter": 1})
    result = learnq.ptq.quantize(model, calib, config)
    learnq.PTQ.from_dict(config.to_dict()) == config

Fields (the defaults are the defaults of the CLI and of recipes too):

* ``method``: a registered PTQ method (:data:`learnq.ptq.registry.PTQ_METHODS`); ``options``: its own options,
  checked against its declared defaults and completed with them;
* ``wbits`` / ``abits``: 1..16, or 32 to leave weights / activations in float (W4A32 is weights only);
* ``granularity`` / ``scheme``: the weight grid, one step per output channel (``"channel"``) by default;
  activations are per tensor unless ``act_per_channel``, unsigned after non-negative inputs, symmetric otherwise;
* ``selection``: which layers (a :class:`learnq.attach.Selection`; None: every conv and linear layer);
  ``skip_first_last``: leave the first and last layers in float (None: the method's default, LAPQ's is True);
* ``bias_correction`` / ``variance_correction``: per-channel corrections of the quantized weights (Banner et al.);
* ``fold_bn``: fold BatchNorm into the layer before it first;
* ``equalize``: cross-layer equalization and high-bias absorption (DFQ, :mod:`learnq.ptq.equalize`) after folding,
  before the method.
* ``target``: None (fake quantization at the layer inputs, the default) or ``"onnxruntime"``: the integer deployment
  target (:mod:`learnq.act.integer_graph`): W8A8 (weights symmetric int8 per channel or per tensor, every tensor an
  integer kernel reads on a uint8 asymmetric grid, min/max calibrated) simulated as onnxruntime's integer kernels
  compute it; the ONNX export then runs every conv, gemm, addition, concatenation and pooling in integer kernels.
  With ``wbits=32`` the model's own quantized weights are kept (a QAT-trained model: QAT-then-PTQ of the
  activations; every conv/linear weight must already be on a symmetric int8 grid) and only the activations are
  calibrated for the target (the model's own activation quantizers after an integer op are fused into its edges).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from learnq.act.integer_graph import TARGETS
from learnq.attach import Selection
from learnq.checks import check_options, selection_from_dict, selection_to_dict
from learnq.errors import ConfigError
from learnq.granularity import Granularity
from learnq.grid import FLOAT_BITS, SCHEMES, GridSpec, check_bits
from learnq.ptq.context import PTQMethod
from learnq.ptq.registry import get_ptq_method

PTQ_CONFIG_VERSION = 1


def _bits(value: Any, name: str) -> int | None:
    """None for ``FLOAT_BITS`` (float), else the checked bit-width (QuantizationError naming ``name``)."""
    if value == FLOAT_BITS and not isinstance(value, bool):
        return None
    return check_bits(value, f"{name} (or {FLOAT_BITS} to leave them in float)")


@dataclass(frozen=True)
class PTQ:
    """A post-training quantization config (module docstring); validated when built, options completed."""

    version: ClassVar[int] = PTQ_CONFIG_VERSION
    method: str = "minmax"
    wbits: int = 8
    abits: int = 8
    granularity: str = "channel"
    scheme: str = "symmetric"
    selection: Selection | None = None
    skip_first_last: bool | None = None
    bias_correction: bool = False
    variance_correction: bool = False
    act_per_channel: bool = False
    fold_bn: bool = True
    equalize: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    target: str | None = None

    def __post_init__(self) -> None:
        info = self.method_info
        if not isinstance(self.options, Mapping):
            raise ConfigError(f"PTQ.options must be a dict of the method's options, got {self.options!r}")
        object.__setattr__(self, "options", check_options(info.options, dict(self.options), "options",
                                                          owner=f"PTQ method {info.name!r}"))
        wb, ab = _bits(self.wbits, "wbits"), _bits(self.abits, "abits")
        if wb is None and ab is None:
            raise ConfigError("wbits and abits are both 32: nothing to quantize; give wbits or abits below 32")
        if isinstance(self.granularity, Granularity):
            object.__setattr__(self, "granularity", str(self.granularity))
        if not isinstance(self.granularity, str):
            raise ConfigError(f"PTQ.granularity must be a string such as 'channel' or 'tensor', got "
                              f"{self.granularity!r}")
        Granularity.parse(self.granularity)
        if self.scheme not in SCHEMES:
            raise ConfigError(f"PTQ.scheme {self.scheme!r} is unknown; use one of {', '.join(SCHEMES)}")
        if self.selection is not None and not isinstance(self.selection, Selection):
            object.__setattr__(self, "selection", selection_from_dict(self.selection))
        if self.skip_first_last is not None and not isinstance(self.skip_first_last, bool):
            raise ConfigError(f"PTQ.skip_first_last must be True, False or None (the method's default), got "
                              f"{self.skip_first_last!r}")
        for name in ("bias_correction", "variance_correction", "act_per_channel", "fold_bn", "equalize"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"PTQ.{name} must be True or False, got {getattr(self, name)!r}")
        self._check_target()

    def _check_target(self) -> None:
        if self.target is None:
            return
        if self.target not in TARGETS:
            raise ConfigError(f"PTQ.target must be None or one of {', '.join(TARGETS)}, got {self.target!r}")
        problems = []
        if self.abits != 8:
            problems.append(f"abits={self.abits} (the integer kernels read uint8: use abits=8)")
        if not isinstance(self.wbits, int) or isinstance(self.wbits, bool) or not (
                2 <= self.wbits <= 8 or self.wbits == FLOAT_BITS):
            problems.append(f"wbits={self.wbits} (int8 weight codes: use 2..8, or {FLOAT_BITS} to keep the weights "
                            "a QAT-trained model has)")
        if self.scheme != "symmetric":
            problems.append(f"scheme={self.scheme!r} (weight zero points must be 0: use 'symmetric')")
        if self.granularity not in ("channel", "tensor"):
            problems.append(f"granularity={self.granularity!r} (use 'channel' or 'tensor')")
        for name in ("bias_correction", "variance_correction", "act_per_channel"):
            if getattr(self, name):
                problems.append(f"{name}=True (not expressible in the integer kernels)")
        if self.skips_first_last():
            problems.append("skip_first_last (every conv/linear layer runs in an integer kernel: give "
                            "skip_first_last=False)")
        if problems:
            raise ConfigError(f"PTQ target {self.target!r} cannot be combined with " + "; ".join(problems))

    @property
    def method_info(self) -> PTQMethod:
        return get_ptq_method(self.method)

    def weight_spec(self) -> GridSpec | None:
        """The weight grid (None: weights stay in float)."""
        wb = _bits(self.wbits, "wbits")
        if wb is None:
            return None
        return GridSpec(bits=wb, scheme=self.scheme, granularity=Granularity.parse(self.granularity))

    def act_bits(self) -> int | None:
        """The activation bits (None: float activations)."""
        return _bits(self.abits, "abits")

    def skips_first_last(self) -> bool:
        return self.method_info.skip_first_last if self.skip_first_last is None else self.skip_first_last

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": PTQ_CONFIG_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "target" and value is None:
                continue  # recorded only when set: configs and files written before the field read the same
            out[f.name] = selection_to_dict(value) if f.name == "selection" else (
                dict(value) if isinstance(value, dict) else value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PTQ:
        """Inverse of :meth:`to_dict`; ConfigError for an unknown key or version."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a PTQ config must be a dict, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("version", PTQ_CONFIG_VERSION)
        if version != PTQ_CONFIG_VERSION:
            raise ConfigError(f"PTQ config version {version!r} is not supported (this learnq reads "
                              f"{PTQ_CONFIG_VERSION})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"PTQ has no field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> PTQ:
        """The config of ``quantize(..., method=..., wbits=..., p=3.0)``-style keywords: the config's fields, and
        every other keyword is an option of the method."""
        known = {f.name for f in fields(cls)} - {"options"}
        options = dict(kwargs.pop("options", None) or {})
        options.update({k: kwargs.pop(k) for k in list(kwargs) if k not in known})
        try:
            return cls(**kwargs, options=options)
        except TypeError as exc:  # a bug in the caller's keywords that is not a config field
            raise ConfigError(f"PTQ: {exc}") from exc


__all__ = ["PTQ", "PTQ_CONFIG_VERSION"]
