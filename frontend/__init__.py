"""Model import: ONNX files, PyTorch modules and ``torch.export`` programs to Relax."""

from __future__ import annotations

import os

import onnx

from reforge.errors import ReforgeError

from .imported import ImportedModel
from .onnx_import import import_onnx
from .tensor_spec import TensorSpec, parse_input_shapes
from .torch_import import import_torch

__all__ = ["ImportedModel", "TensorSpec", "load", "parse_input_shapes"]


def load(model, input_shapes: dict[str, tuple[int, ...]] | None = None, example_inputs=None) -> ImportedModel:
    """Import ``model``: an ``.onnx`` / ``.pt2`` path, an ``onnx.ModelProto``, an ``nn.Module``
    or a ``torch.export.ExportedProgram``."""
    if isinstance(model, ImportedModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        ext = os.path.splitext(path)[1].lower()
        if ext == ".onnx":
            return import_onnx(path, input_shapes)
        if ext in (".pt2", ".pt", ".ep"):
            return import_torch(path, input_shapes)
        raise ReforgeError(f"cannot tell the format of '{path}': expected a .onnx or .pt2 file")
    if isinstance(model, onnx.ModelProto):
        return import_onnx(model, input_shapes)
    return import_torch(model, input_shapes, example_inputs)
