"""Checks on an ONNX graph before anything is built from it: what a broken or hostile file
would otherwise turn into a crash, a hang, a huge allocation or a silently wrong module."""

from __future__ import annotations

import numpy as np
import onnx
import psutil
from onnx import numpy_helper

from reforge.errors import ReforgeError


def check_opset(opset: int) -> None:
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ReforgeError(f"ONNX opset {opset} is newer than this reforge supports (up to {newest})")


def check_structure(graph: onnx.GraphProto) -> None:
    """Every node reads only values produced before it: no cycle, no dangling input."""
    produced = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    producer = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        for name in node.input:
            if name in produced:
                continue
            if name in producer:
                raise ReforgeError(f"node '{node.name}' ({node.op_type}) reads '{name}' before node "
                                   f"'{producer[name].name}' produces it: the graph has a cycle or is not "
                                   "in topological order")
            raise ReforgeError(f"node '{node.name}' ({node.op_type}) reads '{name}', which no node, graph input "
                               "or initializer produces")
        produced.update(node.output)
    for out in graph.output:
        if out.name not in produced:
            raise ReforgeError(f"graph output '{out.name}' is produced by no node")


def check_sizes(graph: onnx.GraphProto, input_shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse, before allocating anything, tensors larger than this machine's memory."""
    declared = [(v.name, v.type.tensor_type) for v in [*graph.input, *graph.output, *graph.value_info]
                if v.type.HasField("tensor_type")]
    for name, ttype in declared:
        dims = input_shapes.get(name) or [d.dim_value for d in ttype.shape.dim]
        if not dims or any(d <= 0 for d in dims):
            continue  # symbolic: resolved (and checked) with --input-shape
        check_size(f"tensor '{name}' declares", dims, ttype.elem_type)


def check_size(what: str, dims, elem_type: int) -> None:
    """Refuse a tensor of these dims larger than this machine's memory; ``what`` starts the message."""
    limit = psutil.virtual_memory().total
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    nbytes = int(np.prod(dims, dtype=object)) * itemsize
    if nbytes > limit:
        raise ReforgeError(f"{what} shape {'x'.join(map(str, dims))} ({nbytes / 2 ** 30:.3g} GiB), more than "
                           f"this machine's memory ({limit / 2 ** 30:.3g} GiB)")


def check_initializers(graph: onnx.GraphProto) -> None:
    """NaN weights make every output NaN: refuse them, naming the initializer."""
    for tensor in graph.initializer:
        if tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            continue
        value = numpy_helper.to_array(tensor)
        bad = int(np.isnan(value).sum())
        if bad:
            raise ReforgeError(f"initializer '{tensor.name}' holds {bad} NaN value{'s' if bad > 1 else ''} "
                               f"(of {value.size}); every output would be NaN")
