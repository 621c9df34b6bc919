"""reforge: a graph-rewriting compiler for convolutional networks on Apache TVM.

    import reforge
    art = reforge.compile("model.onnx", target="x86")      # or an nn.Module with input_shapes=...
    art.save("model.tar")
    outputs = reforge.load("model.tar").run({"x": x})
"""

__version__ = "0.1.0"

from .artifact import Artifact, load  # noqa: E402
from .errors import ReforgeError, VerificationError  # noqa: E402
from .pipeline import compile  # noqa: E402  (shadows the builtin on purpose: reforge.compile)

__all__ = ["Artifact", "ReforgeError", "VerificationError", "compile", "load", "__version__"]
