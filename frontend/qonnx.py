"""QONNX quantizers lowered to standard ONNX before TVM's importer sees them.

``BipolarQuant(x, scale)`` (domains ``qonnx.custom_op.general`` and the older ``finn.custom_op.general``,
as Brevitas' ``export_qonnx`` writes them) is, per the QONNX reference implementation,
``where(x >= 0, 1, -1) · scale``: exactly the ``where`` spelling the binarize pass recognizes (0 -> +1,
so no Sign(0) caveat). On a weight initializer the chain is constant and folds to ±scale; on an
activation a scalar scale folds into the next conv / dense (fold-batchnorm).

Not lowered (the import still stops with "unsupported ONNX op"): ``Quant`` / ``IntQuant`` (k-bit),
``FloatQuant``, ``Trunc``, FINN's ``MultiThreshold`` / ``XnorPopcountMatMul``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

QONNX_DOMAINS = ("qonnx.custom_op.general", "finn.custom_op.general")


def lower_qonnx(proto: onnx.ModelProto) -> int:
    """Replace every BipolarQuant node of ``proto`` (in place) by standard ONNX; returns how many."""
    nodes, count = [], 0
    for node in proto.graph.node:
        if node.domain not in QONNX_DOMAINS or node.op_type != "BipolarQuant" or len(node.input) != 2:
            nodes.append(node)
            continue
        count += 1
        x, scale = node.input
        p = f"{node.name}/bipolar"
        consts = {f"{p}/zero": 0.0, f"{p}/one": 1.0, f"{p}/minus_one": -1.0}
        proto.graph.initializer.extend(numpy_helper.from_array(np.array(v, np.float32), n) for n, v in consts.items())
        nodes += [helper.make_node("GreaterOrEqual", [x, f"{p}/zero"], [f"{p}/ge"], name=f"{p}/ge"),
                  helper.make_node("Where", [f"{p}/ge", f"{p}/one", f"{p}/minus_one"], [f"{p}/pm1"], name=f"{p}/where"),
                  helper.make_node("Mul", [f"{p}/pm1", scale], list(node.output), name=f"{p}/scale")]
    if count:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        if not any(n.domain in QONNX_DOMAINS for n in proto.graph.node):
            kept = [o for o in proto.opset_import if o.domain not in QONNX_DOMAINS]
            del proto.opset_import[:]
            proto.opset_import.extend(kept)
    return count
