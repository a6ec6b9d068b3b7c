"""4-bit weights of linear layers as onnxruntime's ``MatMulNBits`` (com.microsoft contrib operator: weight-only
uint4 blocks along the input dimension, one float scale per block, zero point 8 by default), written from learnq's
own codes with ``to_onnx(..., matmul_nbits=True)``.

A learnq weight fits when its grid is symmetric (offset 0) with codes in [-8, 7] (4 bits or fewer) and granularity
``group:G`` with G a power of two from 16 to 256 dividing the input size K: learnq's groups are G consecutive inputs
of one output row of the (N, K) weight, which is MatMulNBits' block layout; the codes become ``q + 8`` packed two per
byte (low nibble first). DequantizeLinear-free: the runtime reads the packed codes directly (8x smaller than float).
``benchmarks/ort_nbits.py`` measures it against float and int8.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from learnq.grid import QuantizedTensor

if TYPE_CHECKING:
    from learnq.export.graph import GraphWriter

BLOCKS = (16, 32, 64, 128, 256)
DOMAIN = "com.microsoft"


def plan_nbits(qt: QuantizedTensor) -> dict | str:
    """Packed blocks and scales of a (N, K) weight for MatMulNBits, or why it does not fit."""
    gran = qt.granularity
    if qt.codes.ndim != 2:
        return "MatMulNBits takes 2-d linear weights"
    n, k = qt.codes.shape
    if gran.kind != "group" or gran.group_size not in BLOCKS or k % gran.group_size:
        return (f"granularity {gran} is not group:G with G in {BLOCKS} dividing the input size {k}: MatMulNBits' "
                "blocks do not fit")
    if bool((qt.offset != 0).any()) or int(qt.codes.min()) < -8 or int(qt.codes.max()) > 7:
        return "the grid is not symmetric 4-bit (codes in [-8, 7], no offset)"
    g = gran.group_size
    q = (qt.codes.detach().cpu().numpy().astype(np.int16) + 8).astype(np.uint8).reshape(n, k // g, g)
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    return {"packed": np.ascontiguousarray(packed), "scales": qt.scale.detach().float().cpu().numpy().reshape(-1),
            "K": k, "N": n, "block_size": g}


def write_nbits(w: GraphWriter, label: str, x: str, plan: dict) -> str:
    b = w.b
    packed = b.init(plan["packed"], f"{label}.weight_nbits")
    scales = b.init(plan["scales"].astype(np.float32), f"{label}.weight_nbits_scale")
    w.domains.add(DOMAIN)
    out = b.fresh(label or "linear")
    b.nodes.append(b.helper.make_node("MatMulNBits", [x, packed, scales], [out], name=b.fresh(f"{label}/MatMulNBits"),
                                      domain=DOMAIN, K=plan["K"], N=plan["N"], bits=4,
                                      block_size=plan["block_size"]))
    return out


__all__ = ["BLOCKS", "DOMAIN", "plan_nbits", "write_nbits"]
