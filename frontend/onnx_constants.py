"""Pre-evaluate the constant plumbing exporters emit, before TVM's ONNX importer sees it.

torch.onnx's dynamo exporter, among others, writes ``Constant`` nodes in every attribute form
(``value_ints``, ``value_float``, ...) and builds constants through ``Shape`` → ``Expand`` →
``CastLike`` chains on initializers (e.g. the zero bias of a conv without one). TVM 0.27's
importer reads only ``Constant(value=...)`` and cannot ``Expand`` a shape value. Evaluating
these nodes with ONNX's reference evaluator turns them into initializers, which is exact.

``Shape`` of a tensor computed from initializers alone (so no input shape can change it) is the
shape ONNX's shape inference gives it: the dynamo exporter writes the zero bias of a bias-less conv
as ``Shape(weight)`` → ``Expand``, and when the weight is itself computed (``weight_orig *
weight_mask`` of a pruned conv), its shape is the only part of it the plumbing needs.
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
    static = _static_shapes(model)
    from_constants = set(known)  # tensors computed from initializers alone
    kept = []
    for node in graph.node:
        if all(i == "" or i in from_constants for i in node.input):
            from_constants.update(node.output)
        if node.op_type == "Shape" and node.domain in ("", "ai.onnx") and node.input[0] not in known \
                and node.input[0] in from_constants and node.input[0] in static and node.output[0] not in outputs:
            tensor = numpy_helper.from_array(_shape_value(node, static[node.input[0]]), node.output[0])
            graph.initializer.append(tensor)
            known[node.output[0]] = tensor
            continue
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


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Tensor name -> shape, for every value ONNX's shape inference gives a fully static shape."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph  # not strict: unknown shapes stay unknown
    except onnx.shape_inference.InferenceError:  # e.g. an op of an undeclared domain, reported later by name
        return {}
    shapes = {}
    for value in [*inferred.input, *inferred.value_info, *inferred.output]:
        ttype = value.type.tensor_type
        if value.type.HasField("tensor_type") and ttype.HasField("shape") \
                and all(d.HasField("dim_value") for d in ttype.shape.dim):
            shapes[value.name] = [d.dim_value for d in ttype.shape.dim]
    return shapes


def _shape_value(node: onnx.NodeProto, shape: list[int]) -> np.ndarray:
    """ONNX ``Shape`` (with its opset-15 ``start`` / ``end`` attributes) of a tensor of ``shape``."""
    attrs = {a.name: a.i for a in node.attribute}
    start, end = attrs.get("start", 0), attrs.get("end", len(shape))
    return np.asarray(shape[start:end], np.int64)  # Python slicing clamps as ONNX does
