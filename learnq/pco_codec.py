"""pcodec-coded code streams: the fast coder of ``codec="ans"`` files (issue 18; the coder of
:mod:`learnq.entropy_codec` picks it per tensor).

The coder is ``pcodec``'s (Pco; Loncaric 2025, "Pcodec: Better Compression for Numerical Sequences"; the ``pcodec``
package, Rust), never a home-made one. In its "classic" mode without delta encoding it splits the values into bins
(the compression level bounds their number; at the default 8 a code of up to 8 bits gets a bin of its own on the
distributions measured) and ANS-codes the bin of each value, the offset inside a bin in plain bits: for i.i.d. codes
an order-0 entropy coder with its model in its stream. Measured (BENCHMARKS.md "Issue 18"): within 1.7 % of
``Σ n·H`` + the rANS histogram (:func:`learnq.entropy_codec.bound_bits`) on every code tensor of ≥ 4 kB of packed
codes in the benchmark's files, and 4M codes decode in ~25 ms where constriction's rANS takes ~180 ms.

Layout of one tensor: each non-empty stream of :func:`learnq.code_packing.pack_codes` (its symbols as ``uint8`` for
widths up to 8 bits, ``uint16`` above) is one pcodec *standalone* file; the coded bytes are those files back to back,
and the model slice holds the byte length of each stream's file (``uint32`` little-endian, one per stream, 0 for an
empty stream). The grid key is ``"codec": ["pco", 1]``. pcodec guarantees that a release decodes what earlier
releases of its compatibility line (1.x) wrote; the decoded symbols are still checked against the CRC-32 the record
holds (:func:`symbols_crc`: of the symbols as stored here, so that loading needs no bit packing, unlike rANS tensors
whose record holds the packed codes' CRC-32).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from learnq.errors import CheckpointError, ConfigError

PCO = ["pco", 1]
"""The grid key ``"codec"`` of a pcodec-coded tensor: codec name and version of its layout."""
LEVEL = 8
"""pcodec's compression level (its default; 12 gave the same total size on the benchmark's 616 code tensors)."""
EXTRA = "pip install 'learnq[entropy]'"


def import_coder(package: str, codec: str, reading: bool):
    """Import a coder's package (``pcodec``, ``constriction``) or name the extra that provides it: CheckpointError
    when reading a file whose codes are coded by ``codec``, ConfigError when saving with ``codec='ans'``."""
    try:
        return __import__(package)  # the import statement's hook, as `import pcodec` would call it
    except ImportError as exc:
        if reading:
            raise CheckpointError(f"this file's codes are entropy-coded (codec '{codec}'), which needs the "
                                  f"'{package}' package; install it with: {EXTRA}") from exc
        raise ConfigError(f"codec='ans' needs the '{package}' package; install it with: {EXTRA} "
                          "(or save with codec='packed')") from exc


def _pcodec(reading: bool):
    return import_coder("pcodec", "pco", reading)


def symbol_dtype(width: int) -> type:
    """The NumPy dtype a stream of ``width``-bit symbols is coded as."""
    return np.uint8 if width <= 8 else np.uint16


def symbols_crc(symbols: list[np.ndarray], widths: list[int]) -> int:
    """CRC-32 of the streams' symbols as this coder stores them (uint8, or uint16 little-endian), streams in order:
    what a pcodec-coded tensor's record holds and its decoded symbols are checked against."""
    crc = 0
    for s, w in zip(symbols, widths, strict=True):
        crc = zlib.crc32(memoryview(np.ascontiguousarray(s, dtype=symbol_dtype(w))).cast("B"), crc)
    return crc


def encode(symbols: list[np.ndarray], widths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The coded bytes and the model (the byte length of each stream's file) of the streams ``symbols`` (their
    widths ``widths``), both uint8."""
    pc = _pcodec(reading=False)
    config = pc.ChunkConfig(compression_level=LEVEL, delta_spec=pc.DeltaSpec.no_op(),
                            mode_spec=pc.ModeSpec.classic(), enable_8_bit=True)
    blobs = [pc.standalone.simple_compress(np.ascontiguousarray(s, dtype=symbol_dtype(w)), config) if s.size else b""
             for s, w in zip(symbols, widths, strict=True)]
    lengths = np.array([len(b) for b in blobs], "<u4")
    coded = np.frombuffer(b"".join(blobs), np.uint8).copy()
    return torch.from_numpy(coded), torch.from_numpy(lengths.view(np.uint8).copy())


def decode(coded: torch.Tensor, model: torch.Tensor, streams: list[tuple[int, int]], name: str) -> list[np.ndarray]:
    """The symbols of each stream (``streams``: ``(width, count)``) from the coded bytes and model of
    :func:`encode`; every symbol checked to fit its width."""
    pc = _pcodec(reading=True)
    raw = model.numpy()
    if raw.size != 4 * len(streams):
        raise CheckpointError(f"tensor {name!r}: its pcodec model has {raw.size} bytes, not 4 per stream "
                              f"({len(streams)})")
    lengths = raw.view("<u4").astype(np.int64)
    data = coded.numpy()
    if int(lengths.sum()) != data.size:
        raise CheckpointError(f"tensor {name!r}: its pcodec streams add up to {int(lengths.sum())} bytes, but it "
                              f"stores {data.size}")
    out, at = [], 0
    for (width, count), length in zip(streams, lengths.tolist(), strict=True):
        if bool(count) != bool(length):
            raise CheckpointError(f"tensor {name!r}: a pcodec stream of {length} bytes for {count} symbols")
        sym = np.empty(count, symbol_dtype(width))
        if count:
            try:
                progress = pc.standalone.simple_decompress_into(data[at:at + length].tobytes(), sym)
            except (RuntimeError, TypeError, ValueError) as exc:
                raise CheckpointError(f"tensor {name!r}: pcodec cannot decode its codes ({exc})") from exc
            if progress.n_processed != count or not progress.finished:
                raise CheckpointError(f"tensor {name!r}: a pcodec stream holds other than its {count} symbols")
            if width not in (8, 16) and int(sym.max()) >= 1 << width:
                raise CheckpointError(f"tensor {name!r}: pcodec decoded a code past {width} bits")
        out.append(sym)
        at += length
    return out


__all__ = ["LEVEL", "PCO", "decode", "encode", "symbol_dtype", "symbols_crc"]
