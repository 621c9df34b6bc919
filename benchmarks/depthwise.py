"""One depthwise conv layer (3×3, bias, ReLU; MobileOne-S0's shapes): reforge against onnxruntime.

    .venv/bin/python benchmarks/depthwise.py [--threads 1] [--repeat 50]

Per layer, median ms of ``repeat`` runs:
- ``blocked``: the NCHW[b]c depthwise kernel alone under its default schedule (packed input);
- ``NCHW generic``: TVM's NCHW depthwise compute under the generic reduction schedule (the kernel
  reforge ran before the blocked one);
- ``reforge model`` / ``onnxruntime model``: the one-layer ONNX model end to end, NCHW in and out (so
  reforge's time includes the layout transforms at the model's edges, and onnxruntime's its own
  reorders).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import warnings

import numpy as np
import torch
import tvm
from tvm import te, topi

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.results import markdown_table, write_table  # noqa: E402
import reforge  # noqa: E402
from reforge import backends  # noqa: E402
from reforge.bench import onnxruntime_runner, set_threads  # noqa: E402
from reforge.execution import time_calls  # noqa: E402
from reforge.topi_ext.depthwise_nchwc import depthwise_conv2d_nchwc  # noqa: E402
from reforge.topi_ext.layouts import channel_block  # noqa: E402
from reforge.topi_ext.schedules.default import schedule_func  # noqa: E402

LAYERS = [(48, 112, 2), (48, 56, 1), (128, 28, 1), (256, 14, 1), (1024, 7, 1)]  # channels, input size, stride


def _bias_relu(conv: te.Tensor, bias: te.Tensor) -> te.Tensor:
    return topi.nn.relu(topi.add(conv, bias))


def blocked_kernel(channels: int, size: int, stride: int, lanes: int) -> tuple[tvm.tirx.PrimFunc, list]:
    """relu(depthwise(x) + bias) in NCHW[b]c; its PrimFunc and argument shapes."""
    b = channel_block(channels, lanes)
    data = te.placeholder((1, channels // b, size, size, b), name="data")
    kernel = te.placeholder((channels // b, 1, 3, 3, 1, b), name="kernel")
    bias = te.placeholder((1, channels // b, 1, 1, b), name="bias")
    out = _bias_relu(depthwise_conv2d_nchwc(data, kernel, (stride, stride), (1, 1, 1, 1), (1, 1), "float32"), bias)
    return te.create_prim_func([data, kernel, bias, out]), [data.shape, kernel.shape, bias.shape, out.shape]


def nchw_kernel(channels: int, size: int, stride: int) -> tuple[tvm.tirx.PrimFunc, list]:
    """relu(depthwise(x) + bias) in NCHW with TVM's compute; its PrimFunc and argument shapes."""
    data = te.placeholder((1, channels, size, size), name="data")
    kernel = te.placeholder((channels, 1, 3, 3), name="kernel")
    bias = te.placeholder((1, channels, 1, 1), name="bias")
    out = _bias_relu(topi.nn.depthwise_conv2d_nchw(data, kernel, stride, 1, 1, "float32"), bias)
    return te.create_prim_func([data, kernel, bias, out]), [data.shape, kernel.shape, bias.shape, out.shape]


def time_kernel(func: tvm.tirx.PrimFunc, shapes: list, machine, target, repeat: int) -> tuple[float, str]:
    """Median ms of the default-scheduled ``func`` on random arguments, and the rule that scheduled it."""
    scheduled, rule = schedule_func(func, machine)
    lib = tvm.compile(tvm.IRModule({"main": scheduled}), target=target)
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.standard_normal([int(d) for d in s]).astype("float32")) for s in shapes]
    timer = lib.mod.time_evaluator("main", tvm.cpu(), number=5, repeat=repeat)
    return statistics.median(timer(*args).results) * 1e3, rule


def time_models(channels: int, size: int, stride: int, threads: int, repeat: int) -> tuple[float, float, float]:
    """Median ms of reforge and onnxruntime on the one-layer ONNX model, and their relative difference."""
    layer = torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 3, stride, 1, groups=channels),
                                torch.nn.ReLU()).eval()
    x = torch.randn(1, channels, size, size)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "dw.onnx")
        torch.onnx.export(layer, (x,), path, input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
        art = reforge.compile(path)
        ort_run = onnxruntime_runner(path, art.imported, threads)
    assert art.manifest["build"]["schedules"].get("depthwise_nchwc") == 1, art.manifest["build"]
    feeds = {"x": x.numpy()}
    ours, theirs = art.runner.run([x.numpy()])[0], ort_run(feeds)[0]
    rel = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    return (statistics.median(art.runner.time([x.numpy()], repeat)),
            statistics.median(time_calls(lambda: ort_run(feeds), repeat)), rel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    set_threads(args.threads)
    warnings.filterwarnings("ignore")  # torch.onnx's legacy-exporter notice
    target = backends.get("x86")
    lanes = target.vector_lanes()
    title = f"depthwise 3x3 + bias + ReLU, {args.threads} thread(s), median ms of {args.repeat} runs"
    print(title)
    rows = []
    print(f"{'C x H x W / s':>18s} {'blocked':>9s} {'NCHW generic':>13s} {'reforge model':>14s} "
          f"{'onnxruntime model':>18s}  rel diff")
    for channels, size, stride in LAYERS:
        blocked, rule = time_kernel(*blocked_kernel(channels, size, stride, lanes), target.machine, target.tvm_target,
                                    args.repeat)
        generic, generic_rule = time_kernel(*nchw_kernel(channels, size, stride), target.machine, target.tvm_target,
                                            args.repeat)
        assert (rule, generic_rule) == ("depthwise_nchwc", "generic"), (rule, generic_rule)
        ours, ort, rel = time_models(channels, size, stride, args.threads, args.repeat)
        print(f"{f'{channels}x{size}x{size} / {stride}':>18s} {blocked:9.3f} {generic:13.3f} {ours:14.3f} "
              f"{ort:18.3f}  {rel:.1e}")
        rows.append([f"{channels}×{size}×{size} / {stride}", f"{blocked:.3f}", f"{generic:.3f}", f"{ours:.3f}",
                     f"{ort:.3f}", f"{rel:.1e}"])
    table = markdown_table(["layer C×H×W / stride", "blocked kernel", "NCHW generic kernel", "reforge, 1-layer model",
                            "onnxruntime, 1-layer model", "rel diff"], rows)
    print(write_table("depthwise", title, table, f"target {target.name}: {lanes} lanes"))


if __name__ == "__main__":
    main()
