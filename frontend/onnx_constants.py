"""Pre-evaluate the constant and static-shape plumbing exporters emit, before TVM's ONNX importer sees it.

torch.onnx's dynamo exporter, among others, writes ``Constant`` nodes in every attribute form
(``value_ints``, ``value_float``, ...) and builds constants through ``Shape`` → ``Expand`` →
``CastLike`` chains on initializers (e.g. the zero bias of a conv without one). TVM 0.27's
importer reads only ``Constant(value=...)`` and cannot ``Expand`` a shape value. Evaluating
these nodes with ONNX's reference evaluator turns them into initializers, which is exact.

Exporters also compute sizes from a tensor's runtime shape: torchvision's ShuffleNet splits its
channels by ``Shape → Gather → Div → Slice``, ``x.view(x.size(0), -1)`` builds its target by
``Shape → Gather → Unsqueeze → Concat``. Relax needs those sizes static. Once the inputs' shapes
are fixed, ONNX's per-node shape inference gives every tensor's shape in graph order, so each
``Shape`` and ``Size`` of a tensor whose (selected) dims are all known is a constant, and the
arithmetic on such small values folds with it: the importer sees only the static result. A dim
left symbolic (a name) keeps its ``Shape`` node, and everything computed from it, as it was.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from reforge.errors import ReforgeError, one_line

from .onnx_checks import check_size

# Shape and type plumbing: cheap, exact, and never the computation a pass wants to see.
FOLDABLE = {"Constant", "Shape", "Size", "Expand", "Cast", "CastLike", "Concat", "Reshape", "Gather",
            "Unsqueeze", "Squeeze", "Slice", "ConstantOfShape", "Range", "Identity"}
# Arithmetic folded only on small constants (sizes, indices, flags), never on weights.
SHAPE_ARITHMETIC = {"Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Floor", "Ceil", "Max", "Min", "Sign",
                    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Where",
                    "ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin", "Split", "Tile", "GatherElements"}
SHAPE_VALUE_LIMIT = 64  # elements: the largest constant that shape arithmetic folds
_DEFAULT_DOMAINS = ("", "ai.onnx")
_NUMPY_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
                onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT8,
                onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL}


def fold_constants(model: onnx.ModelProto, input_shapes: dict[str, tuple] | None = None) -> onnx.ModelProto:
    """Replace, in place, foldable nodes whose inputs are all constants, ``Shape`` / ``Size`` of
    tensors whose shape is static and ``CastLike`` of a constant to a known type, by initializers.

    ``input_shapes`` (name -> dims; an int is fixed, anything else symbolic) overrides the graph
    inputs' declared shapes; the default keeps the declared ones.
    """
    graph = model.graph
    known = {t.name: t for t in graph.initializer}
    types = _input_types(graph, input_shapes or {})
    outputs = {o.name for o in graph.output}
    kept = []
    for node in graph.node:
        values = None
        if node.domain in _DEFAULT_DOMAINS and not outputs.intersection(node.output):
            values = _static_value(node, types, known)
            if values is None and _foldable(node, known):
                _check_output_sizes(node, _inferred_types(node, model, types, known))
                values = _evaluate(node, model, {i: numpy_helper.to_array(known[i]) for i in node.input if i})
        if values is None:
            kept.append(node)
            types.update(_inferred_types(node, model, types, known))
            continue
        for name, value in zip(node.output, values):
            tensor = numpy_helper.from_array(np.asarray(value), name)
            graph.initializer.append(tensor)
            known[name] = tensor
            types[name] = onnx.helper.make_tensor_type_proto(tensor.data_type, list(tensor.dims))
    del graph.node[:]
    graph.node.extend(kept)
    return model


def _input_types(graph: onnx.GraphProto, given: dict[str, tuple]) -> dict[str, onnx.TypeProto]:
    """Graph inputs (with the given dims where given) and initializers, as ``TypeProto``s."""
    types = {}
    for value in graph.input:
        if value.name in given and value.type.HasField("tensor_type"):
            dims = [d if isinstance(d, int) else None for d in given[value.name]]
            types[value.name] = onnx.helper.make_tensor_type_proto(value.type.tensor_type.elem_type, dims)
        else:
            types[value.name] = value.type
    for tensor in graph.initializer:
        types[tensor.name] = onnx.helper.make_tensor_type_proto(tensor.data_type, list(tensor.dims))
    return types


def _static_dims(value_type: onnx.TypeProto | None) -> tuple[int | None, ...] | None:
    """A tensor type's dims, ``None`` for each unknown one; ``None`` for an unknown rank."""
    if value_type is None or not value_type.HasField("tensor_type") or not value_type.tensor_type.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in value_type.tensor_type.shape.dim)


def _static_value(node: onnx.NodeProto, types: dict[str, onnx.TypeProto],
                  known: dict[str, onnx.TensorProto]) -> list[np.ndarray] | None:
    """What only the input's type decides: ``Shape`` (with its ``start`` / ``end``) or ``Size`` of a
    tensor whose dims in question are known, and ``CastLike`` of a constant to a tensor's known type."""
    if node.op_type == "CastLike" and node.input[0] in known:
        target = types.get(node.input[1])
        elem = target.tensor_type.elem_type if target is not None and target.HasField("tensor_type") else 0
        if elem not in _NUMPY_TYPES:
            return None
        return [numpy_helper.to_array(known[node.input[0]]).astype(onnx.helper.tensor_dtype_to_np_dtype(elem))]
    if node.op_type not in ("Shape", "Size"):
        return None
    dims = _static_dims(types.get(node.input[0]))
    if dims is None:
        return None
    if node.op_type == "Shape":
        attrs = {a.name: a.i for a in node.attribute}
        dims = dims[attrs.get("start", 0):attrs["end"] if "end" in attrs else None]
    if None in dims:
        return None
    if node.op_type == "Size":
        return [np.array(math.prod(dims), dtype=np.int64)]
    return [np.array(dims, dtype=np.int64)]


def _foldable(node: onnx.NodeProto, known: dict[str, onnx.TensorProto]) -> bool:
    if not all(i == "" or i in known for i in node.input):
        return False
    if node.op_type in FOLDABLE:
        return True
    return node.op_type in SHAPE_ARITHMETIC and all(
        math.prod(known[i].dims) <= SHAPE_VALUE_LIMIT for i in node.input if i)


def _check_output_sizes(node: onnx.NodeProto, inferred: dict[str, onnx.TypeProto]) -> None:
    """A constant this machine cannot hold (``ConstantOfShape`` / ``Expand`` / ``Range`` to a huge shape) is
    refused before it is evaluated."""
    for name, value_type in inferred.items():
        dims = _static_dims(value_type)
        if dims is not None and None not in dims:
            check_size(f"node '{node.name}' ({node.op_type}) makes '{name}' of", dims, value_type.tensor_type.elem_type)


def _evaluate(node: onnx.NodeProto, model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list:
    try:
        return ReferenceEvaluator(_single_node_model(node, model, feeds)).run(None, feeds)
    except Exception as err:  # the reference evaluator raises assorted types on bad nodes
        raise ReforgeError(f"cannot evaluate ONNX node '{node.name}' ({node.op_type}): {one_line(err)}") from err


def _inferred_types(node: onnx.NodeProto, model: onnx.ModelProto, types: dict[str, onnx.TypeProto],
                    known: dict[str, onnx.TensorProto]) -> dict[str, onnx.TypeProto]:
    """The node's output types by ONNX's shape inference, given its inputs' types and small constants;
    nothing where an input's type is unknown or inference fails (the importer judges that node)."""
    names = [i for i in node.input if i]
    if any(i not in types for i in names):
        return {}
    data = {i: known[i] for i in names if i in known and math.prod(known[i].dims) <= SHAPE_VALUE_LIMIT}
    try:
        domain = node.domain or "ai.onnx"
        version = next(op.version for op in model.opset_import if (op.domain or "ai.onnx") == domain)
        schema = onnx.defs.get_schema(node.op_type, version, node.domain)
        return onnx.shape_inference.infer_node_outputs(schema, node, {i: types[i] for i in names}, data,
                                                       opset_imports=list(model.opset_import),
                                                       ir_version=model.ir_version)
    except Exception:  # unknown op, subgraph attribute or an inconsistent node: its outputs stay unknown
        return {}


def _single_node_model(node: onnx.NodeProto, model: onnx.ModelProto, feeds: dict) -> onnx.ModelProto:
    inputs = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for n, v in feeds.items()]
    outputs = [onnx.helper.make_empty_tensor_value_info(o) for o in node.output]
    graph = onnx.helper.make_graph([node], "fold", inputs, outputs)
    return onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
