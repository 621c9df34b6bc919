"""The real-model zoo's networks, and their export to ONNX with PyTorch's output on a fixed input.

    .venv-zoo/bin/python benchmarks/zoo_export.py [--models a,b] [--out out/zoo]

Runs in the second venv that ``make zoo`` creates (torch, torchvision and timm, which do not install
beside the main venv's torch). Each network is built from torchvision's or timm's own code with random
weights (seed 0), its BatchNorm statistics and affine parameters randomized (``tests.zoo``), in eval
mode, and exported the way most users' files come about: ``torch.onnx.export`` with the TorchScript
exporter (``dynamo=False``, opset 17, its default constant folding, which folds eval-mode BatchNorm
into the conv before it). Writes ``OUT/NAME.onnx`` and ``OUT/NAME.npz`` (``input``: a fixed N(0, 1)
batch of 1, ``output``: PyTorch's output on it); a network that fails writes ``OUT/NAME.err`` with
the error's first line instead. ``benchmarks/model_zoo.py`` compiles, checks and times the files.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

INPUT, OUTPUT = "image", "output"  # the ONNX files' input and output names


@dataclass(frozen=True)
class ZooModel:
    name: str  # the constructor's name in its library
    family: str
    library: str  # torchvision (classification or segmentation) or timm
    size: int = 224  # input height and width

    @property
    def label(self) -> str:
        return f"{self.name} ({self.library})"


MODELS = [ZooModel(*m) for m in [
    ("mobilenet_v2", "inverted residual, ReLU6", "torchvision"),
    ("mobilenet_v3_large", "inverted residual, SE, hardswish", "torchvision"),
    ("mobilenet_v3_small", "inverted residual, SE, hardswish", "torchvision"),
    ("mnasnet1_0", "inverted residual", "torchvision"),
    ("efficientnet_b0", "inverted residual, SE, SiLU", "torchvision"),
    ("efficientnet_lite0", "inverted residual, ReLU6", "timm"),
    ("ghostnet_100", "Ghost module, SE", "timm"),
    ("mixnet_s", "MixConv, SE, SiLU", "timm"),
    ("shufflenet_v2_x1_0", "channel shuffle", "torchvision"),
    ("regnet_x_400mf", "grouped bottleneck", "torchvision"),
    ("regnet_y_400mf", "grouped bottleneck, SE", "torchvision"),
    ("resnext50_32x4d", "grouped bottleneck", "torchvision"),
    ("seresnext26d_32x4d", "grouped bottleneck, SE", "timm"),
    ("resnet18", "residual", "torchvision"),
    ("resnet34", "residual", "torchvision"),
    ("resnet50", "residual bottleneck", "torchvision"),
    ("resnet18d", "residual, deep stem", "timm"),
    ("cspresnet50", "cross-stage partial", "timm"),
    ("convnext_atto", "ConvNeXt, LayerNorm, GELU", "timm"),
    ("regnetz_b16", "inverted residual, SE, SiLU", "timm"),
    ("densenet121", "dense concat", "torchvision"),
    ("inception_v3", "inception, concat", "torchvision", 299),
    ("googlenet", "inception, concat", "torchvision"),
    ("squeezenet1_0", "fire module, concat", "torchvision"),
    ("vgg11_bn", "plain 3x3", "torchvision"),
    ("alexnet", "plain", "torchvision"),
    ("repvgg_a0", "RepVGG, training form", "timm"),
    ("repvgg_b0", "RepVGG, training form", "timm"),
    ("mobileone_s0", "MobileOne, training form", "timm"),
    ("mobileone_s1", "MobileOne, training form", "timm"),
    ("deeplabv3_mobilenet_v3_large", "segmentation, atrous", "torchvision"),
]]
BY_NAME = {m.name: m for m in MODELS}


def pick(text: str | None) -> list[ZooModel]:
    """``"a,b"`` -> those models in the zoo's order (all of them for ``None``); unknown names exit with one line."""
    if not text:
        return MODELS
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        sys.exit(f"unknown model '{unknown[0]}'; the zoo has: {', '.join(BY_NAME)}")
    return [BY_NAME[n] for n in names]


# constructor arguments beside weights=None: no pretrained backbone, no auxiliary head; GoogLeNet and
# Inception's own init (their default with weights=None, said so to keep them from warning)
KWARGS = {"googlenet": {"init_weights": True}, "inception_v3": {"init_weights": True},
          "deeplabv3_mobilenet_v3_large": {"weights_backbone": None, "aux_loss": False}}


def build(model: ZooModel):
    """The network (an ``nn.Module``) with seed-0 random weights and randomized BatchNorm, in eval mode,
    returning one tensor. torch is imported here, not with the module: ``benchmarks/model_zoo.py`` reads
    the list of networks in the main venv."""
    import torch

    from tests.zoo import randomize_batchnorm

    class OutTensor(torch.nn.Module):
        """torchvision's segmentation models return ``{"out": ...}``; the file's one output is that tensor."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, image):
            return self.net(image)["out"]

    torch.manual_seed(0)
    if model.library == "timm":
        import timm

        net = timm.create_model(model.name, pretrained=False)
    else:
        import torchvision

        segmentation = model.name.startswith("deeplab")
        group = torchvision.models.segmentation if segmentation else torchvision.models
        net = getattr(group, model.name)(weights=None, **KWARGS.get(model.name, {}))
        net = OutTensor(net) if segmentation else net
    return randomize_batchnorm(net)


def save(net, name: str, size: int, out: str) -> None:
    """``OUT/NAME.onnx`` (``net`` exported as most users' files come about) and ``OUT/NAME.npz`` (a fixed
    N(0, 1) input of ``size`` x ``size`` and ``net``'s output on it, the reference the benchmark checks)."""
    import torch

    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32))
    with torch.no_grad():
        y = net(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), os.path.join(out, f"{name}.onnx"), input_names=[INPUT],
                          output_names=[OUTPUT], opset_version=17, dynamo=False)
    np.savez(os.path.join(out, f"{name}.npz"), input=x.numpy(), output=y.numpy())


def main() -> int:
    sys.path.insert(0, ROOT)  # tests.zoo
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated names (default: all)")
    parser.add_argument("--out", default=os.path.join(ROOT, "out", "zoo"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    failed = 0
    for model in pick(args.models):
        err = os.path.join(args.out, f"{model.name}.err")
        for stale in (err, *(os.path.join(args.out, f"{model.name}.{e}") for e in ("onnx", "npz"))):
            if os.path.exists(stale):
                os.remove(stale)
        try:
            save(build(model), model.name, model.size, args.out)
            print(f"exported {model.label}", flush=True)
        except Exception as exc:  # one network failing is a result for the table, not the end of the run
            failed += 1
            line = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            with open(err, "w") as f:
                f.write(line + "\n")
            print(f"export failed {model.label}: {line}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
