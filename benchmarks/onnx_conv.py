"""The single-layer onnxruntime baselines of the layer benchmarks: a one-Conv ONNX model (3×3, pad 1, no
bias), float32 ``Conv`` or int8 ``QLinearConv``, a session on the given threads, and one layer timed under
onnxruntime and reforge with a pass off and on (benchmarks/fft_conv.py, benchmarks/sparse.py)."""

from __future__ import annotations

import statistics

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
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def time_pass(model, x: np.ndarray, threads: int, pass_name: str, labels: tuple[str, str], rtol: float,
              repeat: int, rounds: int, kernels: dict | None = None) -> dict[str, float]:
    """ms of one layer (input ``x``) under onnxruntime and reforge -O2 with ``pass_name`` off and on (``labels``):
    both reforge outputs checked against onnxruntime's (max|Δ| <= rtol·max|ref|), then each runtime timed for
    ``repeat`` calls in ``rounds`` interleaved rounds; the best round's median of each. ``kernels``, if given,
    receives per label the ms of the layer's kernels alone (the profiler's, layout transforms left out)."""
    import reforge
    import tvm
    from reforge.execution import time_calls

    sess = session(model.SerializeToString(), threads)
    ref = sess.run(None, {"x": x})[0]
    tx = [tvm.runtime.tensor(x)]
    fns = {"onnxruntime": lambda: sess.run(None, {"x": x})}
    for label, options in zip(labels, ({"disable_passes": [pass_name]}, {"enable_passes": [pass_name]})):
        art = reforge.compile(model, **options)
        out = list(art.run({"x": x}).values())[0]
        err = float(np.abs(out - ref).max() / np.abs(ref).max())
        assert err <= rtol, (label, err)
        fns[label] = (lambda main: lambda: main(*tx))(art.runner.vm["main"])
        if kernels is not None:
            profile = art.profile({"x": x}, repeat)
            kernels[label] = sum(k.ms for k in profile.kernels if "layout_transform" not in k.name)
    found = [{n: statistics.median(time_calls(fn, repeat, warmup=3)) for n, fn in fns.items()} for _ in range(rounds)]
    return {n: min(r[n] for r in found) for n in fns}
