"""binarize on real Brevitas QONNX exports (``brevitas.export.export_qonnx``, TorchScript path): a
k-bit ``QuantReLU`` (QONNX ``Quant``, signed=0) or ``QuantIdentity`` (signed=1) feeding a ``QuantConv2d`` / ``QuantLinear`` with
binary weights (``SignedBinaryWeightPerTensorConst``: ``BipolarQuant``).

Reference: onnxruntime on the exported graph with its QONNX nodes replaced by their float formula in
plain ONNX ops (as in test_binarize_kbit.py). Tolerance: none. The scales are set to powers of two
(activations ``Uint8ActPerTensorFloatMaxInit`` with ``max_val = 0.25·(2^k - 1)``, signed ones
``Int8ActPerTensorFloatMinMaxInit`` with ``[min_val, max_val] = ±0.25·2^(k-1)``, weights
``scaling_const = 0.125``): with Brevitas' defaults (1/3, 0.1) the float graph itself is not exact,
and the second Quant rounds values that sit exactly on a .5 tie in real arithmetic
(``d·0.1·(1/3) / (1/3)``) up or down by float noise, so neither side is a reference for the other
there."""

from __future__ import annotations

import brevitas.nn as qnn
import numpy as np
import onnx
import onnxoptimizer  # noqa: F401  (brevitas' QONNX export runs it: a test dependency, so missing it fails here)
import pytest
import torch
from torch import nn

import reforge
from tests.helpers import first_output, float_reference, pass_record


class QuantNet(nn.Module):
    def __init__(self, bits: int, signed: bool = False):
        from brevitas.quant import (Int8ActPerTensorFloatMinMaxInit, SignedBinaryWeightPerTensorConst,
                                    Uint8ActPerTensorFloatMaxInit)

        super().__init__()
        if signed:
            act = dict(act_quant=Int8ActPerTensorFloatMinMaxInit, bit_width=bits, min_val=-0.25 * 2 ** (bits - 1),
                       max_val=0.25 * 2 ** (bits - 1), return_quant_tensor=True)
        else:
            act = dict(act_quant=Uint8ActPerTensorFloatMaxInit, bit_width=bits, max_val=0.25 * (2 ** bits - 1),
                       return_quant_tensor=True)
        weight = dict(bias=False, weight_quant=SignedBinaryWeightPerTensorConst, weight_scaling_const=0.125)
        layer = qnn.QuantIdentity if signed else qnn.QuantReLU
        self.act = layer(**act)
        self.conv = qnn.QuantConv2d(40, 16, 3, stride=2, padding=1, **weight)
        self.act2 = layer(**act)
        self.fc = qnn.QuantLinear(16 * 5 * 5, 10, **weight)

    def forward(self, x):
        y = self.act2(self.conv(self.act(x)))
        return self.fc(y.flatten(1))


@pytest.mark.parametrize("bits, signed", [(2, False), (3, False), (3, True)])
def test_brevitas_kbit_activations_binary_weights(bits, signed, tmp_path):
    from brevitas.export import export_qonnx

    torch.manual_seed(bits)
    module = QuantNet(bits, signed).eval()
    x = torch.randn(1, 40, 10, 10)
    path = str(tmp_path / "net.onnx")
    with torch.no_grad():
        export_qonnx(module, x, export_path=path, dynamo=False, input_names=["x"])
    model = onnx.load(path)
    assert {n.op_type for n in model.graph.node} >= {"Quant", "BipolarQuant"}
    art = reforge.compile(model, opt_level=2)
    rec = pass_record(art, "binarize")
    kind = f"{bits}-bit{' signed' if signed else ''}"
    assert rec["rewrites"] == {f"conv -> bitserial_conv2d ({kind})": 1, f"dense -> bitserial_dense ({kind})": 1}
    assert rec["blocks"]["refused"] == {}
    xn = x.numpy()
    np.testing.assert_array_equal(first_output(art, xn), float_reference(model, xn))
