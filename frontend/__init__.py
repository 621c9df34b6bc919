"""Model import: ONNX files, PyTorch modules and ``torch.export`` programs to Relax.
Imported by reforge's pipeline and verify; it imports TVM, onnx / torch (lazily) and reforge's errors and batching."""

from __future__ import annotations

import os

from reforge.batching import with_batch
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


def load(model, input_shapes: dict[str, tuple[int | str, ...]] | None = None, example_inputs=None,
         batch: int | None = None) -> ImportedModel:
    """Import ``model``: an ``.onnx`` / ``.pt2`` path, an ``onnx.ModelProto``, an ``nn.Module``
    or a ``torch.export.ExportedProgram``. onnx and torch are imported here, when a model is.

    ``batch``: one bucket of ``--max-batch`` (:mod:`reforge.batching`): a batch axis named in
    ``input_shapes`` (``image:Nx3x224x224``) or left dynamic in the model becomes ``batch``."""
    import onnx

    from .imported import ImportedModel
    from .onnx_import import import_onnx
    from .torch_import import import_torch

    if isinstance(model, ImportedModel):
        return model
    input_shapes = {name: with_batch(name, shape, batch) for name, shape in (input_shapes or {}).items()}
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        ext = os.path.splitext(path)[1].lower()
        if ext == ".onnx":
            return import_onnx(path, input_shapes, batch=batch)
        if ext in (".pt2", ".pt", ".ep"):
            return import_torch(path, input_shapes, batch=batch)
        raise ReforgeError(f"cannot tell the format of '{path}': expected a .onnx or .pt2 file")
    if isinstance(model, onnx.ModelProto):
        return import_onnx(model, input_shapes, batch=batch)
    return import_torch(model, input_shapes, example_inputs, batch=batch)
