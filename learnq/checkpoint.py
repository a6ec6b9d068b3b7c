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
* every other tensor (unquantized weights, biases, BatchNorm buffers) owns a slice of the blob of its dtype;
* a tied parameter (one Parameter held by several modules, e.g. a language model's token embedding and output
  layer, DiffQ seeds/003 §5.2) is stored once, under its first name; each other name is a record
  ``[name, shape, crc32, "tied", first name]`` that owns no bytes (its crc32 is the first one's), and reading the
  file gives that name the same tensor. Sizes count it once.

The safetensors header holds one metadata key, ``"learnq"``, the JSON text
``{"format":"learnq","version":1,"crc32":C,"zlib":Z}``: ``Z`` is the base64 of the zlib-compressed JSON
``{"metadata": <user metadata>, "grids": [grid, ...], "tensors": [record, ...]}`` and ``C`` the CRC-32 of that JSON
text. So the header stays small however many tensors there are. A record is ``[name, shape, crc32, dtype]`` for a
tensor stored as is and ``[name, shape, crc32, grid index]`` for a quantized one, plus the byte count of its packed
codes when it has per-group widths; ``crc32`` is the CRC-32 of its slices (the ``uint8`` one first). A grid is a
dict without its defaults: ``bits``, ``method`` ("minmax"), ``scheme`` ("symmetric"), ``qmin`` (0),
``granularity`` ("tensor"), ``dtype`` ("float32"), ``offset`` (false; true: offsets stored), ``range`` (false; true:
the range is stored instead of steps and offsets), ``widths`` (none; ``[smallest, bits]`` of the per-group widths),
``extra`` ({}) and ``codec`` (none; ``["ans", 1]`` or ``["pco", 1]``: the codes are entropy-coded by rANS or pcodec,
:mod:`learnq.entropy_codec`: the ``uint8`` slice holds the packed widths then the coded bytes, a second ``uint8`` slice
the coder's model (histograms, or stream lengths), and the record adds the coded byte count, the model length and the
CRC-32 the decoded codes are checked against: of the packed codes for rANS, of the stored symbols for pcodec).
Slice offsets are not stored: they follow from the records, which must tile every blob exactly.

Loading parses the header itself (safetensors' reader is not used; every JSON text is bounded in size and, before it
is parsed, in nesting depth, ``MAX_JSON_DEPTH``), checks the version, the extent of every blob
(a truncated file names the tensors cut off), that the slices tile the blobs, and every tensor's checksum, and
refuses anything else (a pickle written by ``torch.save``, random bytes, a safetensors file without learnq metadata)
with :class:`learnq.errors.CheckpointError`. :mod:`learnq.file_layout` holds the per-tensor coding,
:mod:`learnq.file_records` the slice placement, :mod:`learnq.model_file` the reading (:func:`read`); this module
:func:`save` and :func:`load`. What a file records about a model besides its tensors (folded BatchNorm, activation
quantizers, the PTQ config) are the fields of :mod:`learnq.fields`, which save and load iterate.
"""

from __future__ import annotations

import base64
import json
import os
import zlib
from collections.abc import Mapping

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn
from torch.nn.utils import parametrize

from learnq.accounting import SizeReport, report_for
from learnq.atomic_file import write_atomic
from learnq.bounded_json import MAX_JSON_DEPTH, json_too_deep
from learnq.entropy_codec import check_codec
from learnq.errors import CheckpointError, ConfigError, LearnqError
from learnq.fields import field_states, restorers
from learnq.file_layout import crc32, dtype_name, encode, same_entry
from learnq.grid import QuantizedTensor
from learnq.model_file import FORMAT, FORMAT_VERSION, ModelFile, dumps, read
from learnq.quantized import (
    attach_quantized,
    get_module,
    holders,
    holders_index,
    model_entries,
    plain_state,
    split_name,
    tied_aliases,
    tied_groups,
)


def save(model: nn.Module, path: str | os.PathLike, *, metadata: dict | None = None,
         quantized: Mapping[str, QuantizedTensor] | None = None, report: bool = False,
         codec: str = "packed") -> SizeReport | None:
    """Write ``model`` to ``path`` (quantized parameters bit-packed, everything else as is).

    ``codec="ans"`` entropy-codes the codes of every quantized tensor whose coded form is smaller than its packed
    one (:mod:`learnq.entropy_codec`; needs ``pip install 'learnq[entropy]'``); :func:`load` reads either.

    ``report=True`` returns the file's :class:`SizeReport` (entropy and zlib sizes of every tensor: a moment on a
    large model, so only when asked; ``learnq.size.size_report(path)`` gives the same later); else None.

    The file is written whole or not at all (:func:`learnq.atomic_file.write_atomic`: a crash leaves the previous
    file intact, and the next save into the folder removes what a killed writer left), with the permissions of any
    new file (0666 less the umask).

    ``quantized`` adds (or replaces) quantized tensors for parameters that carry no quantizer. ``metadata`` is any
    JSON-serialisable dict, returned by :func:`read` as ``ModelFile.metadata``.
    """
    user = dict(metadata or {})
    user.update(field_states(model, user))  # folded BatchNorm, activation quantizers, PTQ config (learnq.fields)
    entries = model_entries(model, quantized)
    tied = {alias: first for alias, first in tied_aliases(model, list(entries)).items()
            if same_entry(entries[alias], entries[first])}  # stored once (quantized= may split a tie: kept apart)
    own = {name: value for name, value in entries.items() if name not in tied}
    check_codec(codec)
    encoded = {name: encode(name, value, codec) for name, value in own.items()}
    parts: dict[str, list[torch.Tensor]] = {}
    grids: dict[str, int] = {}  # grid JSON -> index
    records: list[list] = []
    crcs: dict[str, int] = {}
    try:
        for name in entries:
            if name in tied:
                records.append([name, list(entries[name].shape), crcs[tied[name]], "tied", tied[name]])
                continue
            enc = encoded[name]
            crc = 0
            for blob, t in enc.parts():
                parts.setdefault(blob, []).append(t)
                crc = crc32(t, crc)
            crcs[name] = crc
            record: list = [name, list(entries[name].shape), crc]
            if enc.grid is None:
                record.append(dtype_name(enc.data.dtype))  # type: ignore[union-attr]
            else:
                record.append(grids.setdefault(dumps(enc.grid), len(grids)))
                record.extend(enc.record_tail())  # packed code bytes (per-group widths), entropy-coding lengths
            records.append(record)
        text = dumps({"metadata": user, "grids": [json.loads(g) for g in grids], "tensors": records}).encode()
        if json_too_deep(text):
            raise RecursionError
    except RecursionError as exc:
        raise ConfigError(f"metadata (or a quantized tensor's extra dict) nests more than {MAX_JSON_DEPTH - 2} "
                          f"levels deep (the file's JSON: more than {MAX_JSON_DEPTH} levels); load could not read it "
                          "back: flatten it") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"metadata (or a quantized tensor's extra dict) is not JSON-serialisable: {exc}") from exc
    header = dumps({"format": FORMAT, "version": FORMAT_VERSION, "crc32": zlib.crc32(text),
                    "zlib": base64.b64encode(zlib.compress(text, 9)).decode("ascii")})
    blobs = {blob: torch.cat(ts) for blob, ts in parts.items() if sum(t.numel() for t in ts)}
    path = os.fspath(path)
    try:  # the bytes safetensors' save_file writes, but put in place by learnq (umask, no junk after a crash)
        write_atomic(path, safetensors.torch.save(blobs, metadata={FORMAT: header}))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot write the model file {path!r}: {exc}") from exc
    return report_for(own, os.path.getsize(path), encoded=encoded) if report else None


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
    tensors = {k: v for k, v in mf.entries.items() if isinstance(v, torch.Tensor)}
    for field, restore, value in restorers(mf.metadata):  # learnq.fields: BatchNorm folding first
        try:
            restore(model, value, tensors)
        except LearnqError as exc:
            raise CheckpointError(f"{mf.path!r}: its {field.what} do not fit the model ({exc})") from exc
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
    index = holders_index(model)  # once: attach_quantized would walk the model once per tensor
    modules = dict(model.named_modules(remove_duplicate=False))  # once: no submodule lookup per tensor
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
            attach_quantized(model, name, value, index=index, take=True, modules=modules)  # every holder; mf is ours
            continue
        for _, hmod, hattr in holders(model, name, index, modules):
            if parametrize.is_parametrized(hmod, hattr):
                parametrize.remove_parametrizations(hmod, hattr, leave_parametrized=False)
        module_name, param = split_name(name)
        with torch.no_grad():
            getattr(get_module(model, module_name, modules), param).data = value.clone()
    return model


__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFile", "SizeReport", "load", "read", "save"]
