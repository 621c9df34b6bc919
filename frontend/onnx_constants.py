"""Pre-evaluate the constant plumbing exporters emit, before TVM's ONNX importer sees it.

torch.onnx's dynamo exporter, among others, writes ``Constant`` nodes in every attribute form
(``value_ints``, ``value_float``, ...) and builds constants through ``Shape`` → ``Expand`` →
``CastLike`` chains on initializers (e.g. the zero bias of a conv without one). TVM 0.27's
importer reads only ``Constant(value=...)`` and cannot ``Expand`` a shape value. Evaluating
these nodes with ONNX's reference evaluator turns them into initializers, which is exact.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from reforge.errors import ReforgeError, one_line

# Shape and type plumbing: cheap, exact, and never the computation a pass wants to see.
FOLDABLE = {"Constant", "Shape", "Size", "Expand", "Cast", "CastLike", "Concat", "Reshape", "Gather",
            "Unsqueeze", "Squeeze", "Slice", "ConstantOfShape", "Range", "Identity"}


def fold_constant_plumbing(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace foldable nodes whose inputs are all initializers by initializers, in place."""
    graph = model.graph
    known = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    kept = []
    for node in graph.node:
        foldable = (node.op_type in FOLDABLE and node.domain in ("", "ai.onnx")
                    and all(i == "" or i in known for i in node.input)
                    and not outputs.intersection(node.output))
        if not foldable:
            kept.append(node)
            continue
        feeds = {i: numpy_helper.to_array(known[i]) for i in node.input if i}
        try:
            values = ReferenceEvaluator(_single_node_model(node, model, feeds)).run(None, feeds)
        except Exception as err:  # the reference evaluator raises assorted types on bad nodes
            raise ReforgeError(f"cannot evaluate ONNX node '{node.name}' ({node.op_type}): {one_line(err)}") from err
        for name, value in zip(node.output, values):
            tensor = numpy_helper.from_array(np.asarray(value), name)
            graph.initializer.append(tensor)
            known[name] = tensor
    del graph.node[:]
    graph.node.extend(kept)
    return model


def _single_node_model(node: onnx.NodeProto, model: onnx.ModelProto, feeds: dict) -> onnx.ModelProto:
    inputs = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for n, v in feeds.items()]
    outputs = [onnx.helper.make_empty_tensor_value_info(o) for o in node.output]
    graph = onnx.helper.make_graph([node], "fold", inputs, outputs)
    return onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
