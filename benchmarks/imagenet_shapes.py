"""ImageNet-shaped models, untuned: reforge's default schedules against onnxruntime and PyTorch.

    .venv/bin/python benchmarks/imagenet_shapes.py [--threads 1] [--repeat 20] [--models resnet18,vgg11,repvgg_a0]

ResNet-18 (He et al. 2016), VGG-11 with BatchNorm (Simonyan & Zisserman 2015) and RepVGG-A0 in
its multi-branch training form (Ding et al. 2021) at 1x3x224x224,
written here layer for layer (torchvision is not installable beside this torch), random weights and
BatchNorm statistics. Each is exported to ONNX with BatchNorm kept; reforge compiles that file at
-O2; onnxruntime runs the same file; PyTorch runs the module; all in this process, same inputs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.results import markdown_table, write_table  # noqa: E402
import reforge  # noqa: E402
from reforge.bench import baseline_runners, bench, format_bench, set_threads  # noqa: E402
from tests.zoo import BasicBlock, conv_bn_relu, randomize_batchnorm  # noqa: E402


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_relu(3, 64, 7, 2, 3), nn.MaxPool2d(3, 2, 1))
        widths, blocks, cin = [64, 128, 256, 512], [], 64
        for i, w in enumerate(widths):
            blocks += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes))

    def forward(self, image):
        return self.head(self.blocks(self.stem(image)))


def vgg11_bn(classes: int = 1000, pooled_head: bool = False) -> nn.Module:
    """VGG-11-BN; ``pooled_head``: global average pool and one linear layer (the head of the VGG variants pruning
    papers use) instead of torchvision's three-layer classifier, whose 123 M MACs over 494 MB of fp32 weights
    are memory-bound and would hide what pruning the convs gains."""
    layers, cin = [], 3
    for v in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += conv_bn_relu(cin, v)
            cin = v
    if pooled_head:
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(512 * 49, 4096), nn.ReLU(),
                         nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, classes))


class RepVGGA0(nn.Module):
    """RepVGG-A0 in its training form (Ding et al., CVPR 2021): stages of 1-2-4-14-1 blocks, widths
    48-48-96-192-1280; each block is BN(3x3) + BN(1x1) (+ BN(x) where the shapes allow), then ReLU.
    onnxruntime runs the branches; reforge's merge-branches makes each block one 3x3 conv."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        blocks, cin = [], 3
        for width, depth in [(48, 1), (48, 2), (96, 4), (192, 14), (1280, 1)]:
            for i in range(depth):
                blocks.append(_RepVGGBlock(cin, width, 2 if i == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))

    def forward(self, image):
        return self.head(self.blocks(image))


class _RepVGGBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.dense = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))
        self.pointwise = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))
        self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None

    def forward(self, x):
        y = self.dense(x) + self.pointwise(x)
        return torch.relu(y if self.identity is None else y + self.identity(x))


MODELS = {"resnet18": ResNet18, "vgg11": vgg11_bn, "repvgg_a0": RepVGGA0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--models", default="resnet18,vgg11,repvgg_a0")
    args = parser.parse_args()
    set_threads(args.threads)
    rows, layouts = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            torch.manual_seed(0)
            module = randomize_batchnorm(MODELS[name]())
            path = os.path.join(folder, f"{name}.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (torch.randn(1, 3, 224, 224),), path, input_names=["image"],
                                  opset_version=17, dynamo=False, do_constant_folding=False)
            art = reforge.compile(path)
            runners = baseline_runners(path, art.imported, ["onnxruntime"], args.threads)

            def run_torch(feeds, module=module):
                with torch.no_grad():
                    return [module(torch.from_numpy(feeds["image"])).numpy()]

            runners["torch"] = run_torch
            print(f"\n{name} (build: {art.manifest['build']})")
            results = bench(art, art.imported, runners, args.threads, args.repeat)
            print(format_bench(results, args.threads))
            ours = results[0].median
            layouts.append(f"{name} {art.manifest['build']['layout']}")
            rows.append([name, str(args.threads), f"{ours:.1f}", *(
                f"unavailable: {t.unavailable}" if t.unavailable else f"{t.median:.1f} ({t.median / ours:.2f}x)"
                for t in results[1:])])
    table = markdown_table(["model", "threads", "reforge", "onnxruntime", "PyTorch"], rows)
    note = (f"ms, median of {args.repeat} runs, the runtimes taking turns; in brackets baseline / reforge; untuned; "
            f"layouts: {'; '.join(layouts)}")
    print(write_table("imagenet_shapes", f"{args.models} at 1x3x224x224, {args.threads} thread(s)", table, note))


if __name__ == "__main__":
    main()
