"""reforge: a graph-rewriting compiler for convolutional networks on Apache TVM.

    import reforge
    art = reforge.compile("model.onnx", target="x86")      # or an nn.Module with input_shapes=...
    art.save("model.tar")
    outputs = reforge.load("model.tar").run({"x": x})

``import reforge`` imports neither TVM nor torch, onnx or onnxruntime: ``compile`` brings in the
compiler and the frameworks; ``load`` and ``run`` need only TVM's runtime (:mod:`reforge.tvm_runtime`).
"""

from . import threads as _threads
from .errors import ReforgeError, VerificationError

__version__ = "0.1.0"
__all__ = ["Artifact", "ReforgeError", "VerificationError", "compile", "load", "__version__"]

_threads.prepare()  # before any TVM thread pool starts: each is sized once, when it starts

_LAZY = {"Artifact": "artifact", "load": "artifact", "compile": "pipeline"}


def __getattr__(name: str):
    """``compile`` (shadows the builtin on purpose: reforge.compile), ``load``, ``Artifact`` and the
    subpackages (``reforge.frontend``, ``reforge.pipeline``, ...), imported on first use."""
    import importlib
    import importlib.util

    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'reforge' has no attribute {name!r}")
    globals()[name] = value
    return value
