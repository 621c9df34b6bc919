"""Regenerate examples/smallcnn.onnx, the model `make demo` compiles.

A CIFAR-sized VGG-style CNN (Simonyan & Zisserman 2015, with BatchNorm after every conv and
Dropout before the classifier), trained-looking weights from a fixed seed, randomized
BatchNorm statistics, exported by torch.onnx without constant folding so BatchNormalization
nodes stay, plus the inference Dropout node that Keras / tf2onnx exports keep.

    python examples/make_smallcnn.py
"""

import os

import onnx
import torch
from onnx import helper
from torch import nn


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(3, 32), *conv_bn_relu(32, 32), nn.MaxPool2d(2),
            *conv_bn_relu(32, 64), *conv_bn_relu(64, 64), nn.MaxPool2d(2),
            *conv_bn_relu(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(128, classes)

    def forward(self, image):
        return self.classifier(self.features(image))


def build() -> nn.Module:
    torch.manual_seed(0)
    model = SmallCNN()
    for bn in model.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def insert_dropout(model: onnx.ModelProto) -> onnx.ModelProto:
    """Put an inference-mode Dropout in front of the classifier's Gemm."""
    graph = model.graph
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    src = gemm.input[0]
    gemm.input[0] = "dropout_out"
    node = helper.make_node("Dropout", [src], ["dropout_out"], name="classifier/dropout")
    graph.node.insert(list(graph.node).index(gemm), node)
    return model


def main() -> None:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "smallcnn.onnx")
    torch.onnx.export(build(), (torch.randn(1, 3, 32, 32),), path, input_names=["image"],
                      output_names=["logits"], opset_version=17, dynamo=False, do_constant_folding=False)
    model = insert_dropout(onnx.load(path))
    onnx.checker.check_model(model)
    onnx.save(model, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
