"""A whole small network of the mobile families, edges included: a stride-2 stem conv of the 3-channel image,
inverted residuals with hardswish and a hardsigmoid squeeze-excite, a strided one, the global pool and the
classifier (MobileNet-V3's shape, shrunk). It is checked against onnxruntime (RTOL) and built with the two
layout transforms of its edges only: the stem's input, the pooled features the classifier reads."""

from __future__ import annotations

from torch import nn

from .families import InvertedResidual, blocked_edges_only, conv_bn, make


class StridedInvertedResidual(nn.Module):
    """1×1 expansion, 3×3 stride-2 depthwise, 1×1 projection to ``cout``; no shortcut."""

    def __init__(self, cin: int, cout: int, act=nn.Hardswish):
        super().__init__()
        hidden = 4 * cin
        self.body = nn.Sequential(*conv_bn(cin, hidden), act(), *conv_bn(hidden, hidden, 3, 2, hidden), act(),
                                  *conv_bn(hidden, cout))

    def forward(self, x):
        return self.body(x)


def test_mobilenet_v3_shaped_network_stays_blocked(tmp_path):
    net = nn.Sequential(*conv_bn(3, 32, 3, 2), nn.Hardswish(),
                        InvertedResidual(32, act=nn.Hardswish, se_gate=nn.Hardsigmoid),
                        StridedInvertedResidual(32, 48), InvertedResidual(48, act=nn.ReLU6),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 10))
    _, build = blocked_edges_only(make(net), (1, 3, 48, 48), tmp_path / "mobilenet.onnx")
    assert build["schedules"]["depthwise_nchwc"] == 3, build
