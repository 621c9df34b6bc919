"""ONNX files to Relax, with node-named errors and the original input names kept."""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import external_data_helper, helper
from tvm.relax.frontend.onnx import onnx_frontend

from reforge.errors import ReforgeError, one_line

from .imported import ImportedModel
from .onnx_checks import check_initializers, check_opset, check_sizes, check_structure
from .onnx_constants import fold_constants
from .qonnx import lower_qonnx
from .relax_types import output_specs
from .tensor_spec import TensorSpec, check_shape_names, resolve_shape

MIN_OPSET = 13
_DEFAULT_DOMAINS = ("", "ai.onnx")


def load_onnx_model(path: str) -> onnx.ModelProto:
    """Read an ONNX file and its external-data files, refusing paths outside its folder."""
    if not os.path.isfile(path):
        raise ReforgeError(f"model file '{path}' not found")
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise ReforgeError(f"'{path}' is not a valid ONNX file: {one_line(err)}") from err
    if not model.graph.node:
        raise ReforgeError(f"'{path}' holds no ONNX graph (empty or not an ONNX model)")
    base = os.path.dirname(os.path.abspath(path))
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        full = os.path.realpath(os.path.join(base, location))
        if os.path.isabs(location) or os.path.commonpath([full, os.path.realpath(base)]) != os.path.realpath(base):
            raise ReforgeError(f"initializer '{tensor.name}' points to external data '{location}' "
                               f"outside the model's folder")
        if not os.path.isfile(full):
            raise ReforgeError(f"initializer '{tensor.name}': external data file '{location}' not found "
                               f"next to '{path}'")
    try:
        external_data_helper.load_external_data_for_model(model, base)
    except (OSError, ValueError) as err:
        raise ReforgeError(f"cannot read the external data of '{path}': {one_line(err)}") from err
    return model


def import_onnx(model: onnx.ModelProto | str, input_shapes: dict[str, tuple[int, ...]] | None = None,
                name: str | None = None, batch: int | None = None) -> ImportedModel:
    """Import an ONNX model (a path or a ``ModelProto``) into a Relax ``IRModule``; ``batch`` fixes
    a dynamic axis 0 (``dim_param``) of the inputs not in ``input_shapes`` (a bucket of ``--max-batch``)."""
    path = model if isinstance(model, str) else None
    original = load_onnx_model(model) if path else model
    proto = onnx.ModelProto()
    proto.CopyFrom(original)  # the rewrites below stay private; the reference runs the original
    proto = _with_supported_opset(proto)
    check_opset(_opset(proto))
    _name_nodes(proto)
    check_structure(proto.graph)
    check_sizes(proto.graph, input_shapes or {})
    check_initializers(proto.graph)
    qonnx = lower_qonnx(proto)  # BipolarQuant -> standard ONNX (frontend/qonnx.py)
    lowered = proto
    inputs = _input_specs(proto, input_shapes or {}, batch)
    proto = fold_constants(proto, {s.name: s.shape for s in inputs})  # shapes computed from them fold too
    _check_operators(proto)
    importer = _NodeNamedImporter({s.name: list(s.shape) for s in inputs}, {s.name: s.dtype for s in inputs},
                                  keep_params_in_input=False, sanitize=True)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            mod = importer.from_onnx(proto.graph, _opset(proto))
        except ReforgeError:
            raise
        except Exception as err:  # raised by the importer outside any one converter
            raise ReforgeError(f"cannot import the ONNX graph: {one_line(err)}") from err
    outputs = output_specs(mod["main"], [o.name for o in proto.graph.output])
    return ImportedModel(mod=mod, inputs=inputs, outputs=outputs, source="onnx",
                         name=name or (os.path.basename(path) if path else original.graph.name or "model"),
                         # onnxruntime cannot run QONNX ops: with them, the reference runs the lowered
                         # graph (QONNX's own reference semantics written in standard ONNX)
                         reference=(_OnnxRuntimeReference(lowered, None) if qonnx
                                    else _OnnxRuntimeReference(original, path)))


class _NodeNamedImporter(onnx_frontend.ONNXGraphImporter):
    """TVM's ONNX importer, raising one-line errors that name the failing node."""

    def _convert_operator(self, op_name, inputs, attrs, opset):
        try:
            return super()._convert_operator(op_name, inputs, attrs, opset)
        except ReforgeError:
            raise
        except Exception as err:  # TVM raises assorted types from its converters
            node = attrs.get("tvm_custom", {}).get("name", "?")
            raise ReforgeError(f"cannot import ONNX node '{node}' ({op_name}): {one_line(err)}") from err


class _OnnxRuntimeReference:
    """Runs the original ONNX model under onnxruntime: the independent reference."""

    def __init__(self, proto: onnx.ModelProto, path: str | None):
        self._proto, self._path = proto, path
        self._session = None

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import onnxruntime as ort

        if self._session is None:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            src = self._path or self._proto.SerializeToString()
            self._session = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        return self._session.run(None, feeds)


def _opset(proto: onnx.ModelProto) -> int:
    for op in proto.opset_import:
        if op.domain in _DEFAULT_DOMAINS:
            return op.version
    return 1


def _with_supported_opset(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Models older than opset 13 are upgraded with ONNX's version converter."""
    opset = _opset(proto)
    if opset >= MIN_OPSET:
        return proto
    try:
        from onnx import version_converter

        return version_converter.convert_version(proto, MIN_OPSET)
    except Exception as err:  # the converter raises RuntimeError or a C++ exception type
        raise ReforgeError(f"ONNX opset {opset} is older than {MIN_OPSET} and could not be upgraded: "
                           f"{one_line(err)}") from err


def _name_nodes(proto: onnx.ModelProto) -> None:
    """Give unnamed nodes a name (op type and position) so errors can point at them."""
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"


def _check_operators(proto: onnx.ModelProto) -> None:
    known_domains = {op.domain for op in proto.opset_import}
    supported = onnx_frontend._get_convert_map()
    for node in proto.graph.node:
        if node.domain not in _DEFAULT_DOMAINS:
            hint = "" if node.domain in known_domains else " (domain not declared in opset_import)"
            raise ReforgeError(f"unsupported ONNX op '{node.op_type}' of domain '{node.domain}'{hint} "
                               f"at node '{node.name}'")
        if node.op_type not in supported and node.op_type not in ("Constant", "If"):
            raise ReforgeError(f"unsupported ONNX op '{node.op_type}' at node '{node.name}'")


def _input_specs(proto: onnx.ModelProto, given: dict[str, tuple[int, ...]], batch: int | None) -> list[TensorSpec]:
    initializers = {t.name for t in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in initializers]
    check_shape_names(given, [i.name for i in graph_inputs])
    specs = []
    for value in graph_inputs:
        ttype = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise ReforgeError(f"input '{value.name}' is not a tensor; reforge compiles tensor inputs only")
        declared = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in ttype.shape.dim] if ttype.HasField("shape") else None
        if declared is None:
            if value.name not in given:
                raise ReforgeError(f"input '{value.name}' has no declared shape; give one with "
                                   f"--input-shape {value.name}:D0xD1x...")
            declared = [None] * len(given[value.name])
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type)).name
        specs.append(TensorSpec(value.name, resolve_shape(value.name, declared, given.get(value.name), batch), dtype))
    return specs
