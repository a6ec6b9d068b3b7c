"""Reading a learnq model file: the header, its checks, and the decoded tensors (the layout is described in
:mod:`learnq.checkpoint`; never pickle).

:func:`read` parses the header itself (safetensors' reader is not used; every JSON text is bounded in size and, before
it is parsed, in nesting depth, ``MAX_JSON_DEPTH``), checks the version, the extent of every blob (a truncated file
names the tensors cut off), that the slices tile the blobs, and every tensor's checksum, and refuses anything else (a
pickle written by ``torch.save``, random bytes, a safetensors file without learnq metadata) with
:class:`learnq.errors.CheckpointError`. It returns a :class:`ModelFile`: the tensors by name (quantized ones as
:class:`learnq.grid.QuantizedTensor`), the metadata, and its size report.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from learnq.accounting import SizeReport, report_for
from learnq.bounded_json import MAX_JSON_DEPTH, json_too_deep
from learnq.errors import CheckpointError, LearnqError
from learnq.file_layout import Entry
from learnq.file_records import Slice, damaged, decode_record, locate, place_records
from learnq.grid import QuantizedTensor

FORMAT = "learnq"
FORMAT_VERSION = 1
_MAX_HEADER = 100 * 2**20
_MAX_JSON = 256 * 2**20


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
    tied: dict[str, str] = field(default_factory=dict)
    """``{alias: first name}`` of the tied parameters: ``entries[alias] is entries[first]``, stored once."""
    codecs: dict[str, str] = field(default_factory=dict)
    """The coder of each tensor's codes as stored: "ans" (rANS), "pco" (pcodec) or "packed"."""

    @cached_property
    def size(self) -> SizeReport:
        """The size report of this file (computed on first use: zlib of every tensor takes a moment); a tied
        parameter counts once."""
        own = {k: v for k, v in self.entries.items() if k not in self.tied}
        on_disk = {k: (sum(s.nbytes for s in self.slices[k]), self.codecs.get(k, "packed")) for k in own}
        return report_for(own, self.file_bytes, on_disk=on_disk)


def loads(path: str, text: bytes, what: str) -> Any:
    """``json.loads`` of a file's ``text`` after checking its depth (CheckpointError naming ``what``)."""
    if json_too_deep(text):
        raise CheckpointError(f"{path!r}: its {what} nests more than {MAX_JSON_DEPTH} levels deep, which "
                              "learnq.save never writes; the file was crafted or damaged")
    return json.loads(text.decode("utf-8"))


def _dump(info: dict) -> str:
    return json.dumps(info, separators=(",", ":"), allow_nan=False)


def dumps(info: dict) -> str:
    """The compact JSON text learnq writes (no NaN)."""
    return json.dumps(info, separators=(",", ":"), allow_nan=False)


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
        info = loads(path, text, "learnq metadata")
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
        header = loads(path, data[8:8 + n], "safetensors header")
        outer = loads(path, header["__metadata__"][FORMAT].encode("utf-8"), "learnq header")
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
                           value_range=None if value.value_range is None else value.value_range.to(device),
                           palette=None if value.palette is None else value.palette.to(device))


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
    tied: dict[str, str] = {}
    codecs: dict[str, str] = {}
    for item in items:
        if item.tied is not None:  # place_records checked that the first one came earlier
            entries[item.name], tied[item.name] = entries[item.tied], item.tied
            continue
        crc = 0
        for s in slices[item.name]:
            crc = zlib.crc32(view[s.start:s.stop], crc)
        if crc != item.crc:
            raise CheckpointError(f"{path!r}: tensor {item.name!r} is corrupted (CRC-32 mismatch); the file was "
                                  "damaged after it was written")
        try:
            entries[item.name] = _to(decode_record(item, data, slices[item.name]), device)
            if item.coded is not None:
                codecs[item.name] = item.grid["codec"][0]  # type: ignore[index]
        except CheckpointError as exc:
            raise CheckpointError(f"{path!r}: {exc}") from exc
        except (LearnqError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path!r}: the metadata of tensor {item.name!r} is malformed ({exc!r})") from exc
    return ModelFile(path=path, metadata=info["metadata"], version=FORMAT_VERSION, entries=entries,
                     file_bytes=len(data), slices=slices, tied=tied, codecs=codecs)


__all__ = ["FORMAT", "FORMAT_VERSION", "ModelFile", "dumps", "loads", "read"]
