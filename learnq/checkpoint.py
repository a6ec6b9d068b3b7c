"""The learnq model file: one safetensors file of bit-packed codes plus versioned JSON metadata; never pickle.

Layout (DESIGN.md, "honest, bit-packed model files"; DiffQ seeds/003 §3.3 and Eq. 12 for what a true size is):

* a quantized parameter ``name`` is stored as ``name::codes`` (uint8, the stored codes ``q - qmin`` bit-packed by
  :mod:`learnq.packing`, LSB first), ``name::scale`` (float32, one per group), ``name::offset`` (float32, one per
  group; left out of the file when every offset is +0.0) and, for DiffQ's learned widths, ``name::bits`` (uint8,
  one width per group). With per-group widths the groups of each width are packed together, in group order,
  as one fixed-width stream per width (widths ascending), concatenated into ``name::codes``;
* every other tensor of the model (unquantized weights, biases, BatchNorm buffers) is stored as is, in its dtype;
* the safetensors header holds one metadata key, ``"learnq"``: compact JSON with the format name, its version, the
  user's metadata, per tensor (keyed by name, in model order) its kind, grid (method, scheme, bits, qmin,
  granularity), shape, dtype, numel and the CRC-32 of every tensor it stores, and last the CRC-32 of this JSON
  text without that field (so a damaged qmin or scale count is caught, not just damaged tensor data).

Loading parses the header itself before safetensors sees the file, checks the version, the extent of every tensor
(truncation) and every checksum, and refuses anything else (a pickle written by ``torch.save``, random bytes, a
safetensors file without learnq metadata) with :class:`learnq.errors.CheckpointError`.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn
from torch.nn.utils import parametrize

from learnq.act_quant import ACTIVATIONS_KEY, activation_state, input_quantizers, restore_activation_state
from learnq.errors import CheckpointError, ConfigError, LearnqError, QuantizationError
from learnq.granularity import Granularity
from learnq.grid import MAX_BITS, QuantizedTensor, check_bits
from learnq.packing import pack, packed_nbytes, unpack
from learnq.quantized import attach_quantized, get_module, plain_state, quantized_parameters, split_name

if TYPE_CHECKING:
    from learnq.size import SizeReport

FORMAT = "learnq"
FORMAT_VERSION = 1
SEP = "::"
_MAX_HEADER = 100 * 2**20
# A model whose BatchNorm layers were folded before quantization (learnq.ptq.quantize) carries the folded
# (layer, BatchNorm) pairs in this attribute; save records them under this metadata key and load folds the same
# pairs of the freshly built model it loads into, so the file's tensors fit it.
FOLDED_BN_ATTR = "learnq_folded_batchnorm"
FOLDED_BN_KEY = "folded_batchnorm"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}

Entry = QuantizedTensor | torch.Tensor


@dataclass
class ModelFile:
    """A learnq model file as read from disk; ``entries`` (tensor name -> value) are in the file's order."""

    path: str
    metadata: dict
    version: int
    entries: dict[str, Entry] = field(default_factory=dict)
    file_bytes: int = 0

    @cached_property
    def size(self) -> SizeReport:
        """The size report of this file (computed on first use: zlib of every tensor takes a moment)."""
        from learnq.size import size_report

        return size_report(self)


# -- codes <-> bytes --------------------------------------------------------------------------------------------
def offset_stored(qt: QuantizedTensor) -> bool:
    """False when every offset is +0.0 (bit pattern zero), so leaving it out of the file changes no value."""
    return bool((qt.offset.detach().float().contiguous().view(torch.int32) != 0).any())


def _group_widths(qt: QuantizedTensor, name: str) -> torch.Tensor:
    gb = qt.group_bits.detach().cpu().reshape(-1)
    n = qt.granularity.num_groups(qt.shape)
    if gb.numel() != n:
        raise QuantizationError(f"{name}: group_bits has {gb.numel()} values for {n} groups")
    if gb.is_floating_point() and not bool((gb == gb.round()).all()):
        raise QuantizationError(f"{name}: group_bits must be whole numbers, got {gb.tolist()[:8]}...")
    gb = gb.to(torch.int64)
    if bool(((gb < 1) | (gb > MAX_BITS)).any()):
        raise QuantizationError(f"{name}: every group width must be from 1 to {MAX_BITS} bits")
    return gb.to(torch.uint8)


def pack_codes(qt: QuantizedTensor, name: str = "tensor") -> torch.Tensor:
    """The ``name::codes`` bytes of ``qt`` (uint8, 1-D); checks that every code fits its width."""
    stored = qt.stored_codes().detach().cpu().to(torch.int64)
    if qt.group_bits is None:
        top = 2**qt.bits - 1
        if stored.numel() and (int(stored.min()) < 0 or int(stored.max()) > top):
            raise QuantizationError(f"{name}: codes - qmin must lie in [0, {top}] for {qt.bits} bits; "
                                    f"found [{int(stored.min())}, {int(stored.max())}] (check qmin and bits)")
        return pack(stored.reshape(-1), qt.bits)
    widths = _group_widths(qt, name).to(torch.int64)
    rows = qt.granularity.view(stored)  # (n_groups, group_len)
    mask = qt.granularity.group_mask(qt.shape)
    limit = (2**widths - 1).unsqueeze(1)
    if bool(((rows < 0) | (rows > limit))[mask].any()):
        raise QuantizationError(f"{name}: some codes - qmin do not fit the width of their group (group_bits)")
    parts = [pack(rows[widths == w][mask[widths == w]], w) for w in widths.unique().tolist()]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8)


def codes_nbytes(shape: tuple[int, ...], bits: int, granularity: Granularity, group_bits: torch.Tensor | None) -> int:
    """Length of the ``name::codes`` tensor for this grid."""
    numel = math.prod(shape)
    if group_bits is None:
        return packed_nbytes(numel, bits)
    per_group = granularity.group_mask(shape).sum(dim=1)
    widths = group_bits.to(torch.int64).reshape(-1)
    return sum(packed_nbytes(int(per_group[widths == w].sum()), w) for w in widths.unique().tolist())


def unpack_codes(packed: torch.Tensor, shape: tuple[int, ...], bits: int, qmin: int, granularity: Granularity,
                 group_bits: torch.Tensor | None) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: int32 codes of ``shape``."""
    numel = math.prod(shape)
    if group_bits is None:
        return (unpack(packed, bits, numel).reshape(shape) + qmin).to(torch.int32)
    widths = group_bits.to(torch.int64).reshape(-1)
    mask = granularity.group_mask(shape)
    rows = torch.zeros(mask.shape, dtype=torch.int32)
    start = 0
    for w in widths.unique().tolist():
        sel = widths == w
        count = int(mask[sel].sum())
        nbytes = packed_nbytes(count, w)
        block = torch.zeros((int(sel.sum()), mask.shape[1]), dtype=torch.int32)
        block[mask[sel]] = unpack(packed[start:start + nbytes], w, count).to(torch.int32)
        rows[sel] = block
        start += nbytes
    if granularity.kind == "axis":
        axis = granularity.axis % len(shape)
        moved = (shape[axis],) + tuple(s for i, s in enumerate(shape) if i != axis)
        codes = rows.reshape(moved).movedim(0, axis)
    else:
        codes = rows.reshape(-1)[:numel].reshape(shape)
    return (codes + qmin).to(torch.int32).contiguous()


# -- save -------------------------------------------------------------------------------------------------------
def model_entries(model: nn.Module, quantized: Mapping[str, QuantizedTensor] | None = None) -> dict[str, Entry]:
    """What :func:`save` writes: every tensor of ``plain_state(model)``, quantized ones as QuantizedTensor."""
    state = plain_state(model)
    qts = dict(quantized_parameters(model))
    for name, qt in (quantized or {}).items():
        if name not in state:
            raise ConfigError(f"quantized= names {name!r}, which is not a parameter or buffer of the model")
        if not isinstance(qt, QuantizedTensor):
            raise ConfigError(f"quantized[{name!r}] must be a QuantizedTensor, got {type(qt).__name__}")
        if qt.shape != tuple(state[name].shape):
            raise ConfigError(f"quantized[{name!r}] has shape {qt.shape} but the model's tensor has "
                              f"{tuple(state[name].shape)}")
        qts[name] = qt
    # model order: a parametrized tensor at the place of its ``<module>.parametrizations.<param>.original`` key
    order: list[str] = []
    for key in model.state_dict():
        head, sep, tail = f".{key}".partition(".parametrizations.")
        name = f"{head}.{tail.partition('.')[0]}"[1:] if sep else key
        if name in state and name not in order:
            order.append(name)
    order += [k for k in state if k not in order]
    entries: dict[str, Entry] = {}
    for name in order:
        if SEP in name:
            raise ConfigError(f"tensor name {name!r} contains {SEP!r}, which the model file reserves")
        entries[name] = qts.get(name, state[name])
    return entries


def _crc(t: torch.Tensor) -> int:
    return zlib.crc32(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def save(model: nn.Module, path: str | os.PathLike, *, metadata: dict | None = None,
         quantized: Mapping[str, QuantizedTensor] | None = None) -> SizeReport:
    """Write ``model`` to ``path`` (quantized parameters bit-packed, everything else as is); return its sizes.

    ``quantized`` adds (or replaces) quantized tensors for parameters that carry no quantizer. ``metadata`` is any
    JSON-serialisable dict, returned by :func:`read` as ``ModelFile.metadata``.
    """
    from learnq.size import report_for

    user = dict(metadata or {})
    if input_quantizers(model) and ACTIVATIONS_KEY not in user:  # activation quantizers: re-attached by load
        user[ACTIVATIONS_KEY] = activation_state(model)[0]
    folded = getattr(model, FOLDED_BN_ATTR, None)
    if folded and FOLDED_BN_KEY not in user:  # BatchNorm folded before quantization: folded again by load
        user[FOLDED_BN_KEY] = [list(pair) for pair in folded]
    entries = model_entries(model, quantized)
    tensors: dict[str, torch.Tensor] = {}
    packed: dict[str, torch.Tensor] = {}
    records: dict[str, dict[str, Any]] = {}
    for name, value in entries.items():
        if isinstance(value, QuantizedTensor):
            check_bits(value.bits, f"bits of {name}")
            if value.scale.dtype != torch.float32 or value.offset.dtype != torch.float32:
                raise QuantizationError(f"{name}: scale and offset must be float32 (the file stores float32), got "
                                        f"{value.scale.dtype} and {value.offset.dtype}")
            stored = {"codes": pack_codes(value, name), "scale": value.scale.detach().cpu().contiguous()}
            packed[name] = stored["codes"]
            if offset_stored(value):
                stored["offset"] = value.offset.detach().cpu().contiguous()
            if value.group_bits is not None:
                stored["bits"] = _group_widths(value, name)
            rec: dict[str, Any] = {"kind": "quantized", "method": value.method, "scheme": value.scheme,
                                   "bits": value.bits, "qmin": value.qmin, "granularity": str(value.granularity),
                                   "shape": list(value.shape), "dtype": _dtype_name(value.dtype),
                                   "numel": value.codes.numel(), "offset": "offset" in stored}
            if "bits" in stored:
                rec["group_bits"] = True
            if value.extra:
                rec["extra"] = value.extra
            rec["crc32"] = {k: _crc(t) for k, t in stored.items()}
            tensors.update({f"{name}{SEP}{k}": t for k, t in stored.items()})
        else:
            t = value.detach().cpu().contiguous().clone()  # clone: tied tensors must not share memory in the file
            rec = {"kind": "float", "shape": list(t.shape), "dtype": _dtype_name(t.dtype),
                   "numel": t.numel(), "crc32": _crc(t)}
            tensors[name] = t
        records[name] = rec
    info = {"format": FORMAT, "version": FORMAT_VERSION, "metadata": user, "tensors": records}
    try:
        info["crc32"] = zlib.crc32(_dump(info).encode())  # the metadata's own checksum, over the text without it
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"metadata (or a quantized tensor's extra dict) is not JSON-serialisable: {exc}") from exc
    text = _dump(info)
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        safetensors.torch.save_file(tensors, tmp, metadata={FORMAT: text})
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot write the model file {path!r}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return report_for(entries, os.path.getsize(path), packed=packed)


# -- read -------------------------------------------------------------------------------------------------------
def _dump(info: dict) -> str:
    return json.dumps(info, separators=(",", ":"), allow_nan=False)


def _not_learnq(path: str, why: str) -> CheckpointError:
    return CheckpointError(f"{path!r} is not a learnq model file ({why}); write one with learnq.save")


def _parse_header(path: str, data: bytes) -> tuple[dict, dict, int]:
    """(safetensors header, learnq info, start of the data region)."""
    if len(data) < 8:
        raise _not_learnq(path, f"{len(data)} bytes long")
    n = int.from_bytes(data[:8], "little")
    if n < 2 or n > min(len(data) - 8, _MAX_HEADER):
        raise _not_learnq(path, "no safetensors header; a file written by torch.save, a truncated file or random bytes")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
        info = json.loads(header["__metadata__"][FORMAT])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise _not_learnq(path, "no learnq metadata in its header") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise _not_learnq(path, "no learnq metadata in its header")
    if info.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path!r} has learnq format version {info.get('version')!r}, but this learnq reads "
                              f"version {FORMAT_VERSION}; use the learnq release that wrote it")
    crc = info.pop("crc32", None)
    try:
        intact = crc == zlib.crc32(_dump(info).encode())
    except ValueError:
        intact = False
    if not intact:
        raise CheckpointError(f"{path!r}: its learnq metadata is corrupted (CRC-32 mismatch); the file was damaged "
                              "after it was written")
    return header, info, 8 + n


def _check_extent(path: str, header: dict, data_len: int) -> None:
    end = 0
    for key, spec in header.items():
        if key == "__metadata__":
            continue
        try:
            start, stop = (int(x) for x in spec["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path!r}: the header entry of tensor {key!r} is malformed") from exc
        if stop > data_len:
            raise CheckpointError(f"{path!r} is truncated: tensor {key!r} ends at byte {stop} of the data but the "
                                  f"file holds {data_len}; write the file again")
        end = max(end, stop)
    if end != data_len:
        raise CheckpointError(f"{path!r} has {data_len - end} unexpected byte(s) after its last tensor")


def _expect(path: str, name: str, t: torch.Tensor | None, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if t is None:
        raise CheckpointError(f"{path!r}: tensor {name!r} is listed in the metadata but not stored in the file")
    if t.dtype != dtype or tuple(t.shape) != shape:
        raise CheckpointError(f"{path!r}: tensor {name!r} is {t.dtype} {tuple(t.shape)}, expected {dtype} {shape}")
    return t


def _entry(path: str, name: str, rec: dict, raw: dict[str, torch.Tensor],
           spans: dict[str, bytes]) -> tuple[str, Entry, list]:
    """One metadata record -> (name, value, stored tensor names); checks checksums, dtypes and shapes."""
    shape = tuple(int(s) for s in rec["shape"])
    if math.prod(shape) != int(rec["numel"]):
        raise CheckpointError(f"{path!r}: tensor {name!r} has shape {shape} but numel {rec['numel']}")
    crcs = rec["crc32"] if rec["kind"] == "quantized" else {"": rec["crc32"]}
    keys = {k: (f"{name}{SEP}{k}" if k else name) for k in crcs}
    for k, key in keys.items():
        if key not in spans:
            raise CheckpointError(f"{path!r}: tensor {key!r} is listed in the metadata but not stored in the file")
        if zlib.crc32(spans[key]) != int(crcs[k]):
            raise CheckpointError(f"{path!r}: tensor {key!r} is corrupted (CRC-32 mismatch); the file was damaged "
                                  "after it was written")
    if rec["kind"] == "float":
        t = raw[name]
        if _dtype_name(t.dtype) != rec["dtype"] or tuple(t.shape) != shape:
            raise CheckpointError(f"{path!r}: tensor {name!r} is {t.dtype} {tuple(t.shape)} in the file but "
                                  f"{rec['dtype']} {shape} in its metadata")
        return name, t, list(keys.values())
    if rec["kind"] != "quantized" or rec["dtype"] not in _DTYPES:
        raise CheckpointError(f"{path!r}: tensor {name!r} has kind {rec['kind']!r} / dtype {rec['dtype']!r}")
    bits, qmin = check_bits(int(rec["bits"])), int(rec["qmin"])
    gran = Granularity.parse(rec["granularity"])
    n = gran.num_groups(shape)
    scale = _expect(path, f"{name}{SEP}scale", raw.get(f"{name}{SEP}scale"), torch.float32, (n,))
    offset = torch.zeros(n, dtype=torch.float32)
    if rec["offset"]:
        offset = _expect(path, f"{name}{SEP}offset", raw.get(f"{name}{SEP}offset"), torch.float32, (n,))
    group_bits = None
    if rec.get("group_bits", False):
        group_bits = _expect(path, f"{name}{SEP}bits", raw.get(f"{name}{SEP}bits"), torch.uint8, (n,))
        if bool(((group_bits < 1) | (group_bits > MAX_BITS)).any()):
            raise CheckpointError(f"{path!r}: tensor {name!r} has group widths outside 1..{MAX_BITS}")
    nbytes = codes_nbytes(shape, bits, gran, group_bits)
    packed = _expect(path, f"{name}{SEP}codes", raw.get(f"{name}{SEP}codes"), torch.uint8, (nbytes,))
    codes = unpack_codes(packed, shape, bits, qmin, gran, group_bits)
    qt = QuantizedTensor(codes=codes, scale=scale, offset=offset, granularity=gran, bits=bits, qmin=qmin,
                         scheme=str(rec["scheme"]), method=str(rec["method"]), dtype=_DTYPES[rec["dtype"]],
                         group_bits=group_bits, extra=dict(rec.get("extra", {})))
    return name, qt, list(keys.values())


def _to(value: Entry, device: str | torch.device) -> Entry:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    return QuantizedTensor(codes=value.codes.to(device), scale=value.scale.to(device), offset=value.offset.to(device),
                           granularity=value.granularity, bits=value.bits, qmin=value.qmin, scheme=value.scheme,
                           method=value.method, dtype=value.dtype, extra=value.extra,
                           group_bits=None if value.group_bits is None else value.group_bits.to(device))


def read(path: str | os.PathLike, device: str | torch.device = "cpu") -> ModelFile:
    """Read and verify a learnq model file (header, version, extents, checksums); never unpickles."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read the model file {path!r}: {exc.strerror or exc}") from exc
    header, info, start = _parse_header(path, data)
    _check_extent(path, header, len(data) - start)
    spans = {k: data[start + v["data_offsets"][0]:start + v["data_offsets"][1]]
             for k, v in header.items() if k != "__metadata__"}
    try:
        raw = safetensors.torch.load(data)
    except SafetensorError as exc:
        raise CheckpointError(f"{path!r}: safetensors cannot parse the file ({exc})") from exc
    entries: dict[str, Entry] = {}
    used: set[str] = set()
    records = info.get("tensors")
    if not isinstance(records, dict):
        raise CheckpointError(f"{path!r}: the learnq metadata has no tensor list")
    for label, rec in records.items():
        try:
            name, value, keys = _entry(path, label, rec, raw, spans)
        except CheckpointError:
            raise
        except (LearnqError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path!r}: the metadata of tensor {label!r} is malformed ({exc!r})") from exc
        entries[name] = _to(value, device)
        used.update(keys)
    extra = sorted(set(raw) - used)
    if extra:
        raise CheckpointError(f"{path!r} stores tensor(s) {extra} that its metadata does not describe")
    user = info.get("metadata", {})
    return ModelFile(path=path, metadata=user if isinstance(user, dict) else {}, version=FORMAT_VERSION,
                     entries=entries, file_bytes=len(data))


# -- load -------------------------------------------------------------------------------------------------------
def _fold_like(model: nn.Module, recorded: Any, path: str) -> None:
    """Fold the BatchNorm layers of ``model`` that the file's model had folded (a no-op when already folded)."""
    try:
        pairs = [(str(layer), str(bn)) for layer, bn in recorded]
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path!r}: its '{FOLDED_BN_KEY}' metadata is malformed") from exc
    if not pairs or all(isinstance(_submodule(model, bn), nn.Identity) for _, bn in pairs):
        return
    from learnq.pipeline.bn_fold import find_conv_bn_pairs, fold_batchnorm

    was_training = model.training
    model.eval()
    try:
        found = find_conv_bn_pairs(model)
        if sorted(found) != sorted(pairs):
            raise CheckpointError(f"{path!r} was written from a model whose BatchNorm layers {pairs} were folded "
                                  f"into the layer before them, but this model's foldable pairs are {found}; load "
                                  "it into the network it was made from")
        fold_batchnorm(model, inplace=True)
    finally:
        model.train(was_training)
    setattr(model, FOLDED_BN_ATTR, pairs)


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def load(path: str | os.PathLike, model: nn.Module | None = None, *, strict: bool = True,
         device: str | torch.device = "cpu") -> nn.Module | ModelFile:
    """Read ``path``; without ``model`` return the :class:`ModelFile`, with one load it into ``model``.

    Quantized tensors are attached as frozen :class:`learnq.quantized.QuantizedWeight` parametrizations, so the
    model computes with bit-identical dequantized weights; float tensors replace the model's (in the file's dtype).
    A float tensor whose model parameter carries a parametrization replaces it (the parametrization is removed).
    ``strict`` refuses missing or unexpected tensors; the model is moved to ``device``.
    """
    mf = read(path, device)
    if model is None:
        return mf
    if FOLDED_BN_KEY in mf.metadata:
        _fold_like(model, mf.metadata[FOLDED_BN_KEY], mf.path)
    if ACTIVATIONS_KEY in mf.metadata:  # the file's activation quantizers (learnq.act_quant), α from its tensors
        try:
            restore_activation_state(model, mf.metadata[ACTIVATIONS_KEY],
                                     {k: v for k, v in mf.entries.items() if isinstance(v, torch.Tensor)})
        except LearnqError as exc:
            raise CheckpointError(f"{mf.path!r}: its activation quantizers do not fit the model ({exc})") from exc
    state = plain_state(model)
    if strict:
        missing = [k for k in state if k not in mf.entries]
        unexpected = [k for k in mf.entries if k not in state]
        if missing or unexpected:
            parts = ([f"the model's tensor(s) {missing} are missing from the file"] if missing else []) + (
                [f"the file has unexpected tensor(s) {unexpected}"] if unexpected else [])
            raise CheckpointError(f"{mf.path!r} does not fit the model: {'; '.join(parts)}; load with strict=False "
                                  "to skip them")
    names = [k for k in mf.entries if k in state]
    wrong = [f"tensor {k!r} has shape {tuple(mf.entries[k].shape)} in the file but {tuple(state[k].shape)} in the "
             "model" for k in names if tuple(mf.entries[k].shape) != tuple(state[k].shape)]
    if wrong:
        raise CheckpointError(f"{mf.path!r} does not fit the model: {'; '.join(wrong)}")
    model.to(device)
    for name in names:
        value = mf.entries[name]
        if isinstance(value, QuantizedTensor):
            attach_quantized(model, name, value)
            continue
        module_name, param = split_name(name)
        module = get_module(model, module_name)
        if parametrize.is_parametrized(module, param):
            parametrize.remove_parametrizations(module, param, leave_parametrized=False)
        with torch.no_grad():
            getattr(module, param).data = value.clone()
    return model
