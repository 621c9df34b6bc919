"""The single-layer onnxruntime baselines of benchmarks/bitserial.py and benchmarks/winograd.py: a
one-Conv ONNX model (3×3, pad 1, no bias), float32 ``Conv`` or int8 ``QLinearConv``, and a session
on the given threads."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

QUANT = (("xs", 0.05, np.float32), ("xz", 128, np.uint8), ("ws", 0.01, np.float32), ("wz", 0, np.int8),
         ("ys", 2.0, np.float32), ("yz", 128, np.uint8))  # scales and zero points of the int8 model


def conv_model(x_shape: list[int], w: np.ndarray) -> bytes:
    """``y = conv(x, w)``; an int8 ``w`` makes it a QLinearConv on uint8 activations."""
    inits = [numpy_helper.from_array(w, "w")]
    if w.dtype == np.int8:
        inits += [numpy_helper.from_array(np.array(v, dtype), name) for name, v, dtype in QUANT]
        node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], pads=[1] * 4)
        dtype = TensorProto.UINT8
    else:
        node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4)
        dtype = TensorProto.FLOAT
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", dtype, list(x_shape))],
                              [helper.make_tensor_value_info("y", dtype, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def session(model: bytes, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
