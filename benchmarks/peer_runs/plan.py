"""Every row of the side-by-side table (issue 17): library x method x setting, and what is not supported and why.

A method's ``settings`` map each setting to ``RUN`` (run it), ``TRY`` (the peer's API accepts the call but refuses
the setting: it is attempted and the error it raises is recorded as the reason) or a fixed reason (not run: the
library has no such mode). Pure Python: imported by the orchestrator, the workers, the renderer and the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RUN, TRY = "run", "try"

#: setting key -> (weight bits, activation bits (32: float), QAT?, label in the tables)
SETTINGS: dict[str, tuple[int, int, bool, str]] = {
    "W8A8": (8, 8, False, "W8A8"),
    "W4A8": (4, 8, False, "W4A8"),
    "W4A4": (4, 4, False, "W4A4"),
    "W8A32": (8, 32, False, "W8 weight-only"),
    "W4A32": (4, 32, False, "W4 weight-only"),
    "W2A8-QAT": (2, 8, True, "W2A8 QAT"),
}
PTQ3 = ("W8A8", "W4A8", "W4A4")

#: library key -> (distribution name, environment, what the tables call it)
LIBRARIES: dict[str, tuple[str, str, str]] = {
    "learnq": ("learnq", ".venv", "learnq"),
    "aimet": ("aimet-torch", ".venv-bench", "AIMET"),
    "nncf": ("nncf", ".venv-bench", "NNCF"),
    "brevitas": ("brevitas", ".venv-bench", "Brevitas"),
    "torchao": ("torchao", ".venv-bench", "torchao"),
    "quanto": ("optimum-quanto", ".venv-bench", "optimum-quanto"),
}

NO_WO = "weight-only is not one of this method's modes (activations are always quantized)"
NO_QAT = "a post-training method"


@dataclass(frozen=True)
class Method:
    """One method of one library: ``key`` (unique within the library), ``label`` for the tables, what it runs per
    setting, ``fast`` (cheap enough to time as the median of interleaved rounds; else one timed call per seed)."""

    library: str
    key: str
    label: str
    settings: dict[str, str] = field(default_factory=dict)
    fast: bool = True


def _ptq(library: str, key: str, label: str, *, fast: bool = True, extra: dict[str, str] | None = None) -> Method:
    settings = {s: RUN for s in PTQ3}
    settings.update(extra or {})
    return Method(library, key, label, settings, fast)


METHODS: list[Method] = [
    _ptq("learnq", "minmax", "min-max", extra={"W8A32": RUN, "W4A32": RUN}),
    _ptq("learnq", "mse", "MSE", extra={"W8A32": RUN, "W4A32": RUN}),
    _ptq("learnq", "adaround", "AdaRound", fast=False),
    _ptq("learnq", "lapq", "LAPQ", fast=False),
    _ptq("learnq", "gptq", "GPTQ", fast=False),  # pending until learnq.ptq registers "gptq" (issue 15)
    Method("learnq", "lsq", "LSQ", {"W2A8-QAT": RUN}, fast=False),
    Method("learnq", "ste", "STE", {"W2A8-QAT": RUN}, fast=False),
    Method("learnq", "diffq", "DiffQ (2 bits fixed)", {"W2A8-QAT": RUN}, fast=False),
    _ptq("aimet", "quantsim", "QuantSim tf_enhanced per channel"),
    _ptq("aimet", "adaround", "AdaRound + QuantSim", fast=False),
    Method("aimet", "qat", "QuantSim QAT (range learning)", {"W2A8-QAT": RUN}, fast=False),
    Method("nncf", "quantize", "nncf.quantize", {"W8A8": RUN, "W4A8": TRY, "W4A4": TRY}, fast=False),
    Method("nncf", "compress_weights", "compress_weights", {"W8A32": RUN, "W4A32": RUN}),
    Method("nncf", "qat", "nncf.quantize + fine-tuning", {"W2A8-QAT": TRY}, fast=False),
    _ptq("brevitas", "stats_bc", "stats + bias correction"),
    _ptq("brevitas", "mse_bc", "MSE + bias correction"),
    _ptq("brevitas", "mse_gptq", "MSE + GPTQ", fast=False),
    Method("brevitas", "qat", "QAT (Quant layers)", {"W2A8-QAT": RUN}, fast=False),
    Method("torchao", "int8_weight_only", "Int8WeightOnlyConfig", {"W8A32": RUN}),
    Method("torchao", "intx_int4", "IntxWeightOnlyConfig(int4)", {"W4A32": RUN}),
    Method("torchao", "int4_weight_only", "Int4WeightOnlyConfig", {"W4A32": TRY}),
    Method("torchao", "prototype_int4", "PrototypeInt4WeightOnlyConfig", {"W4A32": TRY}),
    Method("torchao", "pt2e_x86", "PT2E X86InductorQuantizer", {"W8A8": RUN}),
    Method("quanto", "quantize", "quantize + calibrate + freeze",
           {"W8A8": RUN, "W4A8": RUN, "W4A4": TRY, "W8A32": RUN, "W4A32": RUN}),
    Method("quanto", "qat", "quantize + training + freeze", {"W2A8-QAT": RUN}, fast=False),
]

#: (library, setting) -> why the library has no method for it (rendered under the tables)
NOT_SUPPORTED: dict[tuple[str, str], str] = {
    ("aimet", "W8A32"): "not run: QuantSim always simulates activations too (output quantizers can be disabled by "
                        "hand, not by an option of the API used here)",
    ("aimet", "W4A32"): "not run: as W8 weight-only",
    ("brevitas", "W8A32"): "not run: the PTQ recipe used here (ptq_common.quantize_model) always quantizes "
                           "activations",
    ("brevitas", "W4A32"): "not run: as W8 weight-only",
    ("torchao", "W4A8"): "not supported: X86InductorQuantizer is 8-bit only; torchao's int4 paths are weight-only "
                         "or dynamic-activation LLM configs for Linear layers",
    ("torchao", "W4A4"): "not supported: as W4A8",
    ("torchao", "W2A8-QAT"): "not run: torchao's QAT fake-quantizes Linear and Embedding layers only "
                             "(FakeQuantizedLinear/Embedding), LeNet's convolutions would stay float",
}


def method(library: str, key: str) -> Method:
    for m in METHODS:
        if m.library == library and m.key == key:
            return m
    raise KeyError(f"no method {library}/{key}")


def rows_for(library: str) -> list[tuple[Method, str, str]]:
    """``(method, setting, RUN or TRY)`` of one library, in table order."""
    return [(m, s, what) for m in METHODS if m.library == library for s, what in m.settings.items()
            if what in (RUN, TRY)]


def row_id(library: str, method_key: str, setting: str, seed: int) -> str:
    return f"{library}/{method_key}/{setting}/seed{seed}"
