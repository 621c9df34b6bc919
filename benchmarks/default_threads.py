"""Latency as a user gets it: each runtime's default session, nothing configured, on the same ONNX file.

    .venv/bin/python benchmarks/default_threads.py [--rounds 7] [--calls 10] [--models demo,resnet18,mobilenet_v2]

reforge: ``reforge.load(path)`` (its thread rule: every physical core this process may use);
onnxruntime: ``InferenceSession(path)`` with default options (only spinning turned off, so that its
idle workers do not busy-wait through the other runtimes' turns); OpenVINO: ``compile_model(path, "CPU")``
with no configuration but f32 (on CPUs with AMX or AVX-512 BF16 it would compute in bfloat16 by default,
a different and less exact model). The runtimes take turns, ``calls`` calls each, round after round; the table
gives each one's median call. Models: the demo (examples/smallcnn.onnx), ResNet-18 and a
MobileNet-V2 written layer for layer (torchvision's widths, ReLU6, random weights and BatchNorm
statistics), at 1x3x224x224.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import reforge  # noqa: E402
from benchmarks.results import markdown_table, publish  # noqa: E402
from reforge.threads import default_threads  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mobilenet_v2(classes: int = 1000):
    """MobileNet-V2 (Sandler et al., CVPR 2018) at width 1.0: torchvision's stages, inverted residuals with
    ReLU6, a residual where stride and widths allow."""
    import torch
    from torch import nn

    def cbr(cin, cout, k=1, stride=1, groups=1, act=True):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return layers + ([nn.ReLU6()] if act else [])

    class Inverted(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            self.body = nn.Sequential(*(cbr(cin, hidden) if expand != 1 else []),
                                      *cbr(hidden, hidden, 3, stride, hidden), *cbr(hidden, cout, act=False))
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.residual else self.body(x)

    layers, cin = cbr(3, 32, 3, 2), 32
    for expand, cout, repeat, stride in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                         (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(repeat):
            layers.append(Inverted(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    layers += cbr(cin, 1280)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1280, classes))


def export(name: str, folder: str) -> str:
    """The model's ONNX file (the demo's own; the others exported with BatchNorm kept)."""
    if name == "demo":
        return os.path.join(ROOT, "examples", "smallcnn.onnx")
    import torch

    from benchmarks.imagenet_shapes import ResNet18
    from tests.zoo import randomize_batchnorm

    torch.manual_seed(0)
    module = randomize_batchnorm({"resnet18": ResNet18, "mobilenet_v2": mobilenet_v2}[name]().eval())
    path = os.path.join(folder, f"{name}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, 3, 224, 224),), path, input_names=["image"], opset_version=17,
                          dynamo=False, do_constant_folding=False)
    return path


def default_sessions(path: str, folder: str) -> dict:
    """name -> (feeds -> first output) for each runtime's default session on ``path``."""
    import onnxruntime as ort

    runners = {}
    art = reforge.load(reforge.compile(path).save(os.path.join(folder, "model.tar")))
    runners["reforge"] = lambda feeds: list(art.run(feeds).values())[0]
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    runners["onnxruntime"] = lambda feeds: session.run(None, feeds)[0]
    try:
        import openvino as ov
    except ImportError:
        return runners
    request = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}).create_infer_request()
    runners["OpenVINO"] = lambda feeds: list(request.infer(feeds).values())[0]
    return runners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--models", default="demo,resnet18,mobilenet_v2")
    parser.add_argument("--note", default="", help="a line on the conditions, e.g. other load on the machine")
    args = parser.parse_args()
    import onnx

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            path = export(name, folder)
            graph = onnx.load(path).graph
            rng = np.random.default_rng(0)
            feeds = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim])
                     .astype("float32") for i in graph.input if i.name not in {t.name for t in graph.initializer}}
            runners = default_sessions(path, folder)
            ref = runners["reforge"](feeds)
            for key, run in runners.items():  # warm-up, and every runtime computes the same thing
                for _ in range(3):
                    out = run(feeds)
                assert np.abs(out - ref).max() <= 1e-3 * np.abs(ref).max(), (name, key)
            times = {k: [] for k in runners}
            for _ in range(args.rounds):
                for key, run in runners.items():
                    for _ in range(args.calls):
                        began = time.perf_counter()
                        run(feeds)
                        times[key].append((time.perf_counter() - began) * 1e3)
            medians = {k: statistics.median(v) for k, v in times.items()}
            rows.append([name, *(f"{medians[k]:.2f} ({medians[k] / medians['reforge']:.2f}x)" if k != "reforge"
                                 else f"{medians[k]:.2f}" for k in runners)])
            print(name, rows[-1][1:], flush=True)
    headers = ["model", "reforge", "onnxruntime", "OpenVINO"][:len(rows[0])]
    note = (f"ms per call, median of {args.rounds} rounds x {args.calls} calls, the runtimes taking turns; in "
            f"brackets the runtime's time / reforge's. Default sessions: reforge {default_threads()} threads "
            f"(its rule), onnxruntime and OpenVINO their own defaults. {args.note}").strip()
    publish("default_threads", f"{args.models}: each runtime's default session", markdown_table(headers, rows),
            note)


if __name__ == "__main__":
    main()
