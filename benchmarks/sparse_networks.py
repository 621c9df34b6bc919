"""Pruned whole networks at 1x3x224x224: reforge -O2 (fold-masks, prune-channels, sparse) against the unpruned
network in reforge, the pruned one with sparse disabled (the ResNet-50 case), and onnxruntime on the same ONNX file.

    .venv/bin/python benchmarks/sparse_networks.py [--threads 1] [--repeat 20] [--cases resnet50-global90,...]

Cases (issue 22's benchmarks), weights random, BatchNorm statistics random, pruned with torch.nn.utils.prune and
made permanent (prune.remove), exported by the TorchScript exporter:
  resnet50-global90   a ResNet-50-shaped network (bottlenecks 3-4-6-3), 90 % global magnitude pruning over every
                      conv and the classifier (magnitudes relative to each layer's standard deviation: prune_global)
  resnet18-ln0        ResNet-18 with half the filters of every block's first conv zeroed (ln_structured, dim 0)
  vgg11-ln1           VGG-11-BN with half the input channels of every conv after the first zeroed (dim 1)
  vgg11gap-ln1        the same with a pooled head (global average pool, one linear layer) instead of the
                      memory-bound 494 MB classifier, which no conv pruning touches
  rm-resnet18-ln0     resnet18-ln0 compiled with remove-residual on as well (an RM'd chain, pruned through the
                      former blocks), against the same pruned residual network without it
Every runtime's output is checked against reforge's (rtol 1e-4), then timed in turns (reforge.bench).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings

import torch
import torch.nn.utils.prune as prune
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.imagenet_shapes import ResNet18, vgg11_bn  # noqa: E402
from benchmarks.results import markdown_table, write_table  # noqa: E402
import reforge  # noqa: E402
from reforge.bench import bench, onnxruntime_runner, set_threads  # noqa: E402
from tests.zoo import conv_bn_relu, randomize_batchnorm  # noqa: E402

RTOL = 1e-4


class Bottleneck(nn.Module):
    """He et al.'s bottleneck: 1x1 reduce, 3x3 (the stride), 1x1 expand to 4x, projection where shapes change."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*conv_bn_relu(cin, width, 1), *conv_bn_relu(width, width, 3, stride),
                                  nn.Conv2d(width, 4 * width, 1, bias=False), nn.BatchNorm2d(4 * width))
        self.shortcut = nn.Identity() if stride == 1 and cin == 4 * width else nn.Sequential(
            nn.Conv2d(cin, 4 * width, 1, stride, bias=False), nn.BatchNorm2d(4 * width))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet50(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_relu(3, 64, 7, 2, 3), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for i, (width, depth) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)]):
            for j in range(depth):
                blocks.append(Bottleneck(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = 4 * width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))

    def forward(self, image):
        return self.head(self.blocks(self.stem(image)))


def convs(net: nn.Module) -> list[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


def prune_global(net: nn.Module) -> None:
    """90 % global magnitude pruning, each weight's magnitude taken relative to its layer's standard deviation:
    on random (untrained) weights, whose scale falls with the fan-in, plain magnitudes would zero the wide layers
    whole (every 3×3 conv after the first stage, and the classifier) and leave the narrow ones half dense."""
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    scores = {(m, "weight"): m.weight.detach().abs() / m.weight.detach().std() for m in layers}
    prune.global_unstructured([(m, "weight") for m in layers], pruning_method=prune.L1Unstructured, amount=0.9,
                              importance_scores=scores)
    for m in layers:
        prune.remove(m, "weight")


def prune_ln(layers: list[nn.Module], dim: int) -> None:
    for m in layers:
        prune.ln_structured(m, "weight", amount=0.5, n=2, dim=dim)
        prune.remove(m, "weight")


CASES = {  # name: (network, pruning, reforge options of the pruned build, reforge options of the comparison)
    "resnet50-global90": (ResNet50, prune_global, {}, {"disable_passes": ["sparse"]}),
    "resnet18-ln0": (ResNet18, lambda n: prune_ln([b.body[0] for b in n.blocks], 0), {}, None),
    "vgg11-ln1": (vgg11_bn, lambda n: prune_ln(convs(n)[1:], 1), {}, None),
    "vgg11gap-ln1": (lambda: vgg11_bn(pooled_head=True), lambda n: prune_ln(convs(n)[1:], 1), {}, None),
    "rm-resnet18-ln0": (ResNet18, lambda n: prune_ln([b.body[0] for b in n.blocks], 0),
                        {"enable_passes": ["remove-residual"]}, {}),
}


def export(net: nn.Module, folder: str, name: str) -> str:
    path = os.path.join(folder, f"{name}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 224, 224),), path, input_names=["image"], opset_version=17,
                          dynamo=False)
    return path


def artifact_runner(art):
    return lambda feeds: art.runner.run(list(feeds.values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--note", default="", help="a line on the conditions, e.g. other load on the machine")
    args = parser.parse_args()
    set_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.cases.split(","):
            make, prune_net, options, other = CASES[name]
            torch.manual_seed(0)
            dense_net = randomize_batchnorm(make()).eval()
            dense_path = export(dense_net, folder, name + "-dense")
            prune_net(dense_net)
            path = export(dense_net, folder, name)
            art = reforge.compile(path, **options)
            runners = {"onnxruntime": onnxruntime_runner(path, art.imported, args.threads, spin=False),
                       "reforge, unpruned": artifact_runner(reforge.compile(dense_path))}
            if other is not None:
                sparse_off = "sparse" in other.get("disable_passes", ())
                label = "reforge, sparse off" if sparse_off else "reforge, residual kept"
                runners[label] = artifact_runner(reforge.compile(path, **other))
            passes = {p["name"]: p for p in art.manifest["passes"]}
            macs = passes["prune-channels"]["macs"]
            results = bench(art, art.imported, runners, args.threads, args.repeat)
            for r in results[1:]:
                if r.runtime != "reforge, unpruned":
                    assert r.rel_err <= RTOL, (name, r.runtime, r.rel_err)
            ours = results[0].median
            timings = {r.runtime: r.median for r in results}
            kernels = {k: v for k, v in art.manifest["build"]["schedules"].items() if k.startswith("sparse")}
            rows.append([name, f"{ours:.1f}", *(
                f"{timings[k]:.1f} ({timings[k] / ours:.2f}x)" if k in timings else "-"
                for k in ("reforge, unpruned", "reforge, sparse off", "reforge, residual kept", "onnxruntime")),
                f"{ours / timings['reforge, unpruned']:.0%}", f"{macs[1] / macs[0]:.0%}",
                ", ".join(f"{k} {v}" for k, v in kernels.items()) or "-"])
            print(rows[-1], flush=True)
    table = markdown_table(["case", "reforge, pruned", "reforge, unpruned", "reforge, sparse off",
                            "reforge, residual kept", "onnxruntime (same file)", "pruned / unpruned",
                            "MACs kept by prune-channels", "sparse kernels"], rows)
    note = (f"ms, median of {args.repeat} runs, the runtimes taking turns; in brackets time / reforge pruned; "
            f"{args.threads} thread(s); untuned. MACs kept: after / before prune-channels (for rm-resnet18-ln0 after "
            f"remove-residual, whose reserved channels add MACs). {args.note}").strip()
    print(write_table("sparse", f"Pruned networks at 1x3x224x224, {args.threads} thread(s)", table, note))


if __name__ == "__main__":
    main()
