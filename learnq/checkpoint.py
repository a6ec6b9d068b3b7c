"""The learnq model file: one safetensors file of bit-packed codes plus versioned JSON metadata; never pickle.

Layout, version 1 (DESIGN.md, "honest, bit-packed model files"; DiffQ seeds/003 §3.3 and Eq. 12 for what a true
size is). The safetensors file holds a few 1-D *blobs*, one per dtype and named by it (``uint8``, ``float32``,
``int64``, ...). Every tensor of the model owns consecutive *slices* of them, in model order:

* a quantized tensor owns a ``uint8`` slice: its packed group widths (DiffQ's per-group bits only: each width minus
  the smallest, at ``bits_for_range(smallest, largest)`` bits), then its packed codes ``q - qmin``
  (:mod:`learnq.packing`, LSB first; with per-group widths the groups of each width form one stream, widths
  ascending, each rounded up to whole bytes); and a ``float32`` slice: one step per group, then one offset per group
  (left out when every offset is +0.0), or, for a tensor with ``value_range`` (DiffQ), only the range ``[lo, hi]``,
  from which :func:`learnq.grid.range_group_params` gives the steps and offsets;
* every other tensor (unquantized weights, biases, BatchNorm buffers) owns a slice of the blob of its dtype.

The safetensors header holds one metadata key, ``"learnq"``, the JSON text
``{"format":"learnq","version":1,"crc32":C,"zlib":Z}``: ``Z`` is the base64 of the zlib-compressed JSON
``{"metadata": <user metadata>, "grids": [grid, ...], "tensors": [record, ...]}`` and ``C`` the CRC-32 of that JSON
text. So the header stays small however many tensors there are. A record is ``[name, shape, crc32, dtype]`` for a
tensor stored as is and ``[name, shape, crc32, grid index]`` for a quantized one, plus the byte count of its packed
codes when it has per-group widths; ``crc32`` is the CRC-32 of its slices (the ``uint8`` one first). A grid is a
dict without its defaults: ``bits``, ``method`` ("minmax"), ``scheme`` ("symmetric"), ``qmin`` (0),
``granularity`` ("tensor"), ``dtype`` ("float32"), ``offset`` (false; true: offsets stored), ``range`` (false; true:
the range is stored instead of steps and offsets), ``widths`` (none; ``[smallest, bits]`` of the per-group widths)
and ``extra`` ({}). Slice offsets are not stored: they follow from the records, which must tile every blob exactly.

Loading parses the header itself (safetensors' reader is not used; every JSON text is bounded in size and, before it
is parsed, in nesting depth, ``MAX_JSON_DEPTH``), checks the version, the extent of every blob
(a truncated file names the tensors cut off), that the slices tile the blobs, and every tensor's checksum, and
refuses anything else (a pickle written by ``torch.save``, random bytes, a safetensors file without learnq metadata)
with :class:`learnq.errors.CheckpointError`. :mod:`learnq.file_layout` holds the per-tensor coding and the slice
placement; this module the header, :func:`save`, :func:`read` and :func:`load`.
"""

from __future__ import annotations

import base64
import binascii
import json
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
from learnq.activations import WRAPPERS_KEY, restore_wrappers, wrapped_activations, wrapper_state
from learnq.atomic_file import write_atomic
from learnq.bounded_json import MAX_JSON_DEPTH, json_too_deep
from learnq.errors import CheckpointError, ConfigError, LearnqError
from learnq.file_layout import (
    Entry,
    Slice,
    crc32,
    damaged,
    decode_record,
    dtype_name,
    encode,
    locate,
    place_records,
    same_entry,
)
from learnq.grid import QuantizedTensor
from learnq.quantized import (
    attach_quantized,
    get_module,
    holders,
    plain_state,
    quantized_parameters,
    split_name,
    tied_groups,
)

if TYPE_CHECKING:
    from learnq.size import SizeReport

FORMAT = "learnq"
FORMAT_VERSION = 1
_MAX_HEADER = 100 * 2**20
_MAX_JSON = 256 * 2**20
# A model whose BatchNorm layers were folded before quantization (learnq.ptq.quantize) carries the folded
# (layer, BatchNorm) pairs in this attribute; save records them under this metadata key and load folds the same
# pairs of the freshly built model it loads into, so the file's tensors fit it.
FOLDED_BN_ATTR = "learnq_folded_batchnorm"
FOLDED_BN_KEY = "folded_batchnorm"


@dataclass
class ModelFile:
    """A learnq model file as read from disk; ``entries`` (tensor name -> value) are in the file's order and
    ``slices`` (tensor name -> its slices of the blobs) say where each one's bytes are."""

    path: str
    metadata: dict
    version: int
    entries: dict[str, Entry] = field(default_factory=dict)
    file_bytes: int = 0
    slices: dict[str, list[Slice]] = field(default_factory=dict)

    @cached_property
    def size(self) -> SizeReport:
        """The size report of this file (computed on first use: zlib of every tensor takes a moment)."""
        from learnq.size import size_report

        return size_report(self)


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
    return {name: qts.get(name, state[name]) for name in order}


def _loads(path: str, text: bytes, what: str) -> Any:
    """``json.loads`` of a file's ``text`` after checking its depth (CheckpointError naming ``what``)."""
    if json_too_deep(text):
        raise CheckpointError(f"{path!r}: its {what} nests more than {MAX_JSON_DEPTH} levels deep, which "
                              "learnq.save never writes; the file was crafted or damaged")
    return json.loads(text.decode("utf-8"))


def _dump(info: dict) -> str:
    return json.dumps(info, separators=(",", ":"), allow_nan=False)


def save(model: nn.Module, path: str | os.PathLike, *, metadata: dict | None = None,
         quantized: Mapping[str, QuantizedTensor] | None = None) -> SizeReport:
    """Write ``model`` to ``path`` (quantized parameters bit-packed, everything else as is); return its sizes.

    The file is written whole or not at all (:func:`learnq.atomic_file.write_atomic`: a crash leaves the previous
    file intact, and the next save into the folder removes what a killed writer left), with the permissions of any
    new file (0666 less the umask).

    ``quantized`` adds (or replaces) quantized tensors for parameters that carry no quantizer. ``metadata`` is any
    JSON-serialisable dict, returned by :func:`read` as ``ModelFile.metadata``.
    """
    from learnq.size import report_for

    user = dict(metadata or {})
    if input_quantizers(model) and ACTIVATIONS_KEY not in user:  # activation quantizers: re-attached by load
        user[ACTIVATIONS_KEY] = activation_state(model)[0]
    if wrapped_activations(model) and WRAPPERS_KEY not in user:  # PACT / observer wrappers: re-wrapped by load
        user[WRAPPERS_KEY] = wrapper_state(model)
    folded = getattr(model, FOLDED_BN_ATTR, None)
    if folded and FOLDED_BN_KEY not in user:  # BatchNorm folded before quantization: folded again by load
        user[FOLDED_BN_KEY] = [list(pair) for pair in folded]
    entries = model_entries(model, quantized)
    encoded = {name: encode(name, value) for name, value in entries.items()}
    parts: dict[str, list[torch.Tensor]] = {}
    grids: dict[str, int] = {}  # grid JSON -> index
    records: list[list] = []
    try:
        for name, enc in encoded.items():
            crc = 0
            for blob, t in enc.parts():
                parts.setdefault(blob, []).append(t)
                crc = crc32(t, crc)
            record: list = [name, list(entries[name].shape), crc]
            if enc.grid is None:
                record.append(dtype_name(enc.data.dtype))  # type: ignore[union-attr]
            else:
                record.append(grids.setdefault(_dump(enc.grid), len(grids)))
                if enc.widths is not None:
                    record.append(enc.codes.numel())  # type: ignore[union-attr]
            records.append(record)
        text = _dump({"metadata": user, "grids": [json.loads(g) for g in grids], "tensors": records}).encode()
        if json_too_deep(text):
            raise RecursionError
    except RecursionError as exc:
        raise ConfigError(f"metadata (or a quantized tensor's extra dict) nests more than {MAX_JSON_DEPTH - 2} "
                          f"levels deep (the file's JSON: more than {MAX_JSON_DEPTH} levels); load could not read it "
                          "back: flatten it") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"metadata (or a quantized tensor's extra dict) is not JSON-serialisable: {exc}") from exc
    header = _dump({"format": FORMAT, "version": FORMAT_VERSION, "crc32": zlib.crc32(text),
                    "zlib": base64.b64encode(zlib.compress(text, 9)).decode("ascii")})
    blobs = {blob: torch.cat(ts) for blob, ts in parts.items() if sum(t.numel() for t in ts)}
    path = os.fspath(path)
    try:  # the bytes safetensors' save_file writes, but put in place by learnq (umask, no junk after a crash)
        write_atomic(path, safetensors.torch.save(blobs, metadata={FORMAT: header}))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot write the model file {path!r}: {exc}") from exc
    return report_for(entries, os.path.getsize(path), encoded=encoded)


# -- read -------------------------------------------------------------------------------------------------------
def _not_learnq(path: str, why: str) -> CheckpointError:
    return CheckpointError(f"{path!r} is not a learnq model file ({why}); write one with learnq.save")


def _inflate(path: str, outer: dict) -> dict:
    """The learnq JSON inside the header: base64 (canonical) -> zlib -> CRC-32 -> JSON."""
    if set(outer) != {"format", "version", "crc32", "zlib"} or not isinstance(outer["zlib"], str):
        raise damaged(path, "its learnq metadata")
    try:
        packed = base64.b64decode(outer["zlib"], validate=True)
        if base64.b64encode(packed).decode("ascii") != outer["zlib"]:  # unused bits of the last character
            raise ValueError("not canonical base64")
        inflater = zlib.decompressobj()
        text = inflater.decompress(packed, _MAX_JSON)
        if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
            raise ValueError("not one complete zlib stream")
        if zlib.crc32(text) != outer["crc32"]:
            raise ValueError("CRC-32 mismatch")
        info = _loads(path, text, "learnq metadata")
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise damaged(path, f"its learnq metadata ({exc})") from exc
    if not isinstance(info, dict) or not isinstance(info.get("tensors"), list) or \
            not isinstance(info.get("grids"), list) or not isinstance(info.get("metadata"), dict):
        raise damaged(path, "its learnq metadata (no tensor list)")
    return info


def _parse_header(path: str, data: bytes) -> tuple[dict, dict, int]:
    """(safetensors header, learnq info, start of the data region)."""
    if len(data) < 8:
        raise _not_learnq(path, f"{len(data)} bytes long")
    n = int.from_bytes(data[:8], "little")
    if n < 2 or n > min(len(data) - 8, _MAX_HEADER):
        raise _not_learnq(path, "no safetensors header; a file written by torch.save, a truncated file or random bytes")
    try:
        header = _loads(path, data[8:8 + n], "safetensors header")
        outer = _loads(path, header["__metadata__"][FORMAT].encode("utf-8"), "learnq header")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise _not_learnq(path, "no learnq metadata in its header") from exc
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise _not_learnq(path, "no learnq metadata in its header")
    if outer.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path!r} has learnq format version {outer.get('version')!r}, but this learnq reads "
                              f"version {FORMAT_VERSION}; use the learnq release that wrote it")
    return header, _inflate(path, outer), 8 + n


def _to(value: Entry, device: str | torch.device) -> Entry:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    return QuantizedTensor(codes=value.codes.to(device), scale=value.scale.to(device), offset=value.offset.to(device),
                           granularity=value.granularity, bits=value.bits, qmin=value.qmin, scheme=value.scheme,
                           method=value.method, dtype=value.dtype, extra=value.extra,
                           group_bits=None if value.group_bits is None else value.group_bits.to(device),
                           value_range=None if value.value_range is None else value.value_range.to(device))


def read(path: str | os.PathLike, device: str | torch.device = "cpu") -> ModelFile:
    """Read and verify a learnq model file (header, version, extents, checksums); never unpickles."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read the model file {path!r}: {exc.strerror or exc}") from exc
    header, info, start = _parse_header(path, data)
    items, counts = place_records(path, info)
    slices = locate(path, header, items, counts, start, len(data) - start)
    view = memoryview(data)
    entries: dict[str, Entry] = {}
    for item in items:
        crc = 0
        for s in slices[item.name]:
            crc = zlib.crc32(view[s.start:s.stop], crc)
        if crc != item.crc:
            raise CheckpointError(f"{path!r}: tensor {item.name!r} is corrupted (CRC-32 mismatch); the file was "
                                  "damaged after it was written")
        try:
            entries[item.name] = _to(decode_record(item, data, slices[item.name]), device)
        except CheckpointError as exc:
            raise CheckpointError(f"{path!r}: {exc}") from exc
        except (LearnqError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path!r}: the metadata of tensor {item.name!r} is malformed ({exc!r})") from exc
    return ModelFile(path=path, metadata=info["metadata"], version=FORMAT_VERSION, entries=entries,
                     file_bytes=len(data), slices=slices)
# -- load -------------------------------------------------------------------------------------------------------
def _fold_like(model: nn.Module, recorded: Any, path: str) -> None:
    """Fold the BatchNorm layers of ``model`` that the file's model had folded (a no-op when already folded)."""
    try:
        pairs = [(str(layer), str(bn)) for layer, bn in recorded]
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path!r}: its '{FOLDED_BN_KEY}' metadata is malformed") from exc
    if not pairs or all(isinstance(_submodule(model, bn), nn.Identity) for _, bn in pairs):
        return
    from learnq.bn_fold import find_conv_bn_pairs, fold_batchnorm

    was_training = model.training
    model.eval()
    try:
        found = find_conv_bn_pairs(model)
        if sorted(found) != sorted(pairs):
            raise CheckpointError(f"{path!r} was written from a model whose BatchNorm layers {pairs} were folded "
                                  f"into the layer before them, but this model's foldable pairs are {found}; load "
                                  "it into the network it was made from")
        fold_batchnorm(model, inplace=True, pairs=found)
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
    ``strict`` refuses missing or unexpected tensors; the model is moved to ``device``. A tied parameter of
    ``model`` (one Parameter held by several modules) must have identical entries under all its names in the file;
    a quantized one gets one QuantizedWeight on every holder.
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
    if WRAPPERS_KEY in mf.metadata:  # wrapped activations (learnq.activations: PACT, observer), values from tensors
        try:
            restore_wrappers(model, mf.metadata[WRAPPERS_KEY])
        except LearnqError as exc:
            raise CheckpointError(f"{mf.path!r}: its activation quantizers (PACT/observer) do not fit the model "
                                  f"({exc})") from exc
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
    for group in tied_groups(model, names):  # a tied parameter: one value for every holder, set once
        name = group[0]
        split = [other for other in group[1:] if not same_entry(mf.entries[name], mf.entries[other])]
        if split:
            raise CheckpointError(
                f"{mf.path!r}: {name!r} and {split[0]!r} are one tied parameter of the model, but the file holds "
                "different values for them (a tied weight split in two, e.g. by PTQ of a learnq that quantized "
                "only one of its holders); load it into a model where they are separate Parameters, or quantize "
                "the model again and save it")
        value = mf.entries[name]
        if isinstance(value, QuantizedTensor):
            attach_quantized(model, name, value)  # on every holder
            continue
        for _, hmod, hattr in holders(model, name):
            if parametrize.is_parametrized(hmod, hattr):
                parametrize.remove_parametrizations(hmod, hattr, leave_parametrized=False)
        module_name, param = split_name(name)
        with torch.no_grad():
            getattr(get_module(model, module_name), param).data = value.clone()
    return model
