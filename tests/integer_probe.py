"""Test helper for the integer target: onnxruntime's uint8 codes at every QuantizeLinear of an exported graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch


def runtime_codes(path: Path, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, {plan node name: codes}) that onnxruntime computes for ``x`` (one thread, all optimisations): every
    QuantizeLinear output becomes a graph output (onnxruntime still fuses; the uint8 tensors are kept)."""
    proto = onnx.load(str(path))
    outs = [n.output[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    for name in outs:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None))
    probe = path.with_name(path.stem + ".probe.onnx")
    onnx.save(proto, str(probe))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    got = ort.InferenceSession(str(probe), options, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    codes = {}
    for name, value in zip(outs, got[1:], strict=True):
        node = name.rsplit("_quantized", 1)[0]
        codes["x" if node == "input" else node] = torch.from_numpy(value.astype(np.int64))
    return torch.from_numpy(got[0]), codes
