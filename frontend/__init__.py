"""Model import: ONNX files, PyTorch modules and ``torch.export`` programs to Relax."""

from __future__ import annotations

import os

from reforge.errors import ReforgeError

from .tensor_spec import TensorSpec, parse_input_shapes

__all__ = ["ImportedModel", "TensorSpec", "load", "parse_input_shapes"]


def __getattr__(name: str):
    """``ImportedModel`` on first use: it imports TVM's compiler, which running an artifact (the
    only user of ``TensorSpec`` then) does not need."""
    if name == "ImportedModel":
        from .imported import ImportedModel

        return ImportedModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load(model, input_shapes: dict[str, tuple[int, ...]] | None = None, example_inputs=None) -> ImportedModel:
    """Import ``model``: an ``.onnx`` / ``.pt2`` path, an ``onnx.ModelProto``, an ``nn.Module``
    or a ``torch.export.ExportedProgram``. onnx and torch are imported here, when a model is."""
    import onnx

    from .imported import ImportedModel
    from .onnx_import import import_onnx
    from .torch_import import import_torch

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
