"""A small model zoo for the end-to-end tests: five CNN families, each written from its paper
and shrunk so that one compile + run takes seconds on a laptop CPU.

Every model has BatchNorm (so fold-batchnorm has work to do) and most have Dropout (so
remove-noops has). ``build`` gives the model with fixed-seed weights and randomized BatchNorm
statistics and affine parameters, in eval mode: a BatchNorm folded with the wrong scale, shift,
sign or channel axis changes the output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1,
                 padding: int | None = None) -> list[nn.Module]:
    pad = k // 2 if padding is None else padding
    return [nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class AllConvNet(nn.Module):
    """All-CNN-C (Springenberg et al., "Striving for Simplicity", ICLR 2015 workshop, table 2):
    max-pooling replaced by stride-2 3x3 convs, 1x1 convs, global average pooling as the
    classifier; Dropout after the input and after each strided layer as in the paper, plus
    BatchNorm after every conv. The class maps (a biased 1x1 conv + BatchNorm) are averaged
    without the paper's last ReLU, so that no logit is clamped to zero."""

    def __init__(self, classes: int = 10, w: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(0.2),
            *conv_bn_relu(3, w), *conv_bn_relu(w, w, stride=2), nn.Dropout(0.5),
            *conv_bn_relu(w, 2 * w), *conv_bn_relu(2 * w, 2 * w, stride=2), nn.Dropout(0.5),
            *conv_bn_relu(2 * w, 2 * w, padding=0), *conv_bn_relu(2 * w, 2 * w, 1),
            nn.Conv2d(2 * w, classes, 1), nn.BatchNorm2d(classes),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, image):
        return self.net(image)


def mlpconv(cin: int, hidden: int, cout: int, k: int) -> list[nn.Module]:
    """Lin et al.'s mlpconv layer: a kxk conv followed by two 1x1 convs (a per-pixel MLP)."""
    return [*conv_bn_relu(cin, hidden, k), *conv_bn_relu(hidden, hidden, 1), *conv_bn_relu(hidden, cout, 1)]


class NetworkInNetwork(nn.Module):
    """Network in Network (Lin, Chen & Yan, ICLR 2014), the CIFAR-10 configuration: three
    mlpconv blocks, max / average pooling and Dropout between them, global average pooling
    over the last block's class maps. BatchNorm after each conv, as in the common BN variant;
    no ReLU on the class maps, so that no logit is clamped to zero."""

    def __init__(self, classes: int = 10, w: int = 24):
        super().__init__()
        self.net = nn.Sequential(
            *mlpconv(3, w, w, 5), nn.MaxPool2d(3, 2, 1), nn.Dropout(0.5),
            *mlpconv(w, w, w, 5), nn.AvgPool2d(3, 2, 1), nn.Dropout(0.5),
            *mlpconv(w, w, classes, 3)[:-1],  # class maps: conv + BatchNorm, no ReLU
            nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, image):
        return self.net(image)


class VGGBN(nn.Module):
    """VGG (Simonyan & Zisserman, ICLR 2015) with BatchNorm (Ioffe & Szegedy 2015): conv-BN-ReLU
    stacks and 2x2 max-pooling, then a classifier Linear-BN1d-ReLU-Dropout-Linear."""

    def __init__(self, classes: int = 10, w: int = 16, hidden: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(3, w), *conv_bn_relu(w, w), nn.MaxPool2d(2),
            *conv_bn_relu(w, 2 * w), *conv_bn_relu(2 * w, 2 * w), nn.MaxPool2d(2),
            *conv_bn_relu(2 * w, 4 * w), nn.MaxPool2d(2), nn.Flatten())
        self.classifier = nn.Sequential(
            nn.Linear(4 * w * 4 * 4, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(hidden, classes))

    def forward(self, image):
        return self.classifier(self.features(image))


class BasicBlock(nn.Module):
    """He et al.'s basic block: two 3x3 conv-BN, identity shortcut, or a 1x1 conv-BN
    projection when the stride or width changes (option B)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(*conv_bn_relu(cin, cout, stride=stride),
                                  nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet (He et al., CVPR 2016): conv-BN-ReLU stem, max-pooling, two basic blocks
    with identity shortcuts, one stride-2 block with a projection shortcut, global average
    pooling, Linear."""

    def __init__(self, classes: int = 10, w: int = 16):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_relu(3, w), nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.Sequential(BasicBlock(w, w), BasicBlock(w, w), BasicBlock(w, 2 * w, stride=2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * w, classes))

    def forward(self, image):
        return self.head(self.blocks(self.stem(image)))


class SSVEPNet(nn.Module):
    """A compact 1-D CNN for SSVEP classification from multichannel EEG (8 electrodes, 1 s at
    256 Hz), after Ravi et al. (J. Neural Eng. 2020) and EEGNet (Lawhern et al. 2018): a
    per-electrode temporal filter bank (grouped Conv1d) + BatchNorm1d, a pointwise spatial
    filter across electrodes, a separable (depthwise + pointwise) temporal conv, each followed
    by BatchNorm1d, ReLU, AvgPool1d and Dropout; a Linear classifier over 12 stimulation
    frequencies.

    Sizing notes (compile time, not accuracy): ReLU as in Ravi et al. rather than EEGNet's ELU,
    and 32 channels after the spatial filter, because TVM's untuned LLVM code for a fused
    ELU, or for a BatchNorm over fewer than 32 channels x 256 samples, takes seconds to JIT."""

    def __init__(self, electrodes: int = 8, samples: int = 256, bands: int = 4, spatial: int = 32,
                 classes: int = 12):
        super().__init__()
        fb = electrodes * bands
        self.net = nn.Sequential(
            nn.Conv1d(electrodes, fb, 31, padding=15, groups=electrodes, bias=False), nn.BatchNorm1d(fb),
            nn.Conv1d(fb, spatial, 1, bias=False), nn.BatchNorm1d(spatial), nn.ReLU(),
            nn.AvgPool1d(4), nn.Dropout(0.25),
            nn.Conv1d(spatial, spatial, 15, padding=7, groups=spatial, bias=False),
            nn.Conv1d(spatial, spatial, 1, bias=False), nn.BatchNorm1d(spatial), nn.ReLU(),
            nn.AvgPool1d(8), nn.Dropout(0.25), nn.Flatten(),
            nn.Linear(spatial * samples // 32, classes))

    def forward(self, eeg):
        return self.net(eeg)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm trained-looking, asymmetric statistics and affine parameters:
    means N(0, 0.5), variances in [0.5, 2], biases N(0, 0.5), weights of magnitude [0.5, 1.5]
    with every third channel negative. Returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                n = bn.num_features
                sign = torch.where(torch.arange(n) % 3 == 1, -1.0, 1.0)
                bn.running_mean.copy_(0.5 * torch.randn(n, generator=gen))
                bn.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
                bn.weight.copy_(sign * (0.5 + torch.rand(n, generator=gen)))
                bn.bias.copy_(0.5 * torch.randn(n, generator=gen))
    return model.eval()


@dataclass(frozen=True)
class Entry:
    """A row of the zoo: the model's class, its input's name (``forward``'s argument) and shape."""

    name: str
    make: Callable[[], nn.Module]
    input_name: str
    input_shape: tuple[int, ...]

    def build(self, seed: int = 0) -> nn.Module:
        """The model with fixed-seed weights and randomized BatchNorms, in eval mode."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = self.make()
        return randomize_batchnorm(model, seed)

    def example(self, seed: int = 0) -> torch.Tensor:
        return torch.randn(self.input_shape, generator=torch.Generator().manual_seed(seed))


IMAGE = (1, 3, 32, 32)
MODELS = [
    Entry("allconv", AllConvNet, "image", IMAGE),
    Entry("nin", NetworkInNetwork, "image", IMAGE),
    Entry("vgg_bn", VGGBN, "image", IMAGE),
    Entry("resnet", ResNet, "image", IMAGE),
    Entry("ssvep", SSVEPNet, "eeg", (1, 8, 256)),
]
