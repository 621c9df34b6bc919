"""PyTorch modules and saved ``torch.export`` programs (.pt2) to Relax."""

from __future__ import annotations

import inspect
import os
import warnings

import numpy as np
import torch
import tvm
from tvm import relax
from tvm.relax.frontend.torch import from_exported_program

from reforge.errors import ReforgeError, one_line

from .imported import ImportedModel
from .relax_types import output_specs
from .tensor_spec import TensorSpec, check_shape_names, resolve_shape
from .torch_fft import ComplexLowering, has_complex


def load_pt2(path: str) -> torch.export.ExportedProgram:
    if not os.path.isfile(path):
        raise ReforgeError(f"model file '{path}' not found")
    try:
        return torch.export.load(path)
    except Exception as err:  # zipfile, pickle and torch errors alike
        raise ReforgeError(f"'{path}' is not a loadable torch.export program (.pt2): {one_line(err)}") from err


def import_torch(model: torch.nn.Module | torch.export.ExportedProgram | str,
                 input_shapes: dict[str, tuple[int, ...]] | None = None,
                 example_inputs: tuple[torch.Tensor, ...] | None = None,
                 name: str | None = None, batch: int | None = None) -> ImportedModel:
    """Import an ``nn.Module`` (with ``example_inputs`` or ``input_shapes``), an
    ``ExportedProgram`` or a ``.pt2`` path through ``torch.export``; ``batch`` fixes a program's
    dynamic axis 0 (a bucket of ``--max-batch``)."""
    input_shapes = input_shapes or {}
    if isinstance(model, str):
        name = name or os.path.basename(model)
        model = load_pt2(model)
    if isinstance(model, torch.export.ExportedProgram):
        program = _specialize(model, input_shapes, batch)
        source, runnable = "pt2", program.module()
    elif isinstance(model, torch.nn.Module):
        model = model.eval()
        args = example_inputs if example_inputs is not None else _example_inputs(model, input_shapes)
        program = _export(model, tuple(args))
        source, runnable = "torch", model
    else:
        raise ReforgeError(f"cannot import a {type(model).__name__}: give an nn.Module, an ExportedProgram, "
                           "an .onnx or a .pt2 path")
    inputs = _program_inputs(program)
    mod = _from_program(program)
    n_out = len(program.graph_signature.user_outputs)
    outputs = output_specs(mod["main"], [f"output{i}" for i in range(n_out)])
    return ImportedModel(mod=mod, inputs=inputs, outputs=outputs, source=source,
                         name=name or type(runnable).__name__, reference=_TorchReference(runnable, inputs))


def _from_program(program: torch.export.ExportedProgram) -> tvm.IRModule:
    """TVM's importer; complex (torch.fft) subgraphs through :class:`ComplexLowering`'s converters."""
    lowering = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if has_complex(program):
                program = program.run_decompositions()
                lowering = ComplexLowering(program)
            mod = from_exported_program(program, unwrap_unit_return_tuple=True,
                                        custom_convert_map={"where.self": _where,
                                                            **(lowering.convert_map() if lowering else {})},
                                        run_ep_decomposition=lowering is None)
    except ReforgeError:
        raise
    except Exception as err:  # TVM reports unsupported aten ops as assorted exception types
        raise ReforgeError(f"cannot import the PyTorch program: {one_line(err)}") from err
    # a folded Fourier multiplier leaves its transform and product unread
    return relax.transform.DeadCodeElimination()(mod) if lowering and lowering.folded else mod


def _where(node, importer) -> relax.Var:
    """``torch.where(c, x, y)`` promotes x and y to its result dtype (the decomposition of ``heaviside``
    selects between a float and an int64 tensor); TVM's converter requires them equal."""
    dtype = str(node.meta["val"].dtype).removeprefix("torch.")
    cond, *values = (importer.env[a] if isinstance(a, torch.fx.Node) else a for a in node.args)
    values = [v if isinstance(v, relax.Expr) else relax.const(v, dtype) for v in values]
    values = [v if str(v.ty.dtype) == dtype else relax.op.astype(v, dtype) for v in values]
    return importer.block_builder.emit(relax.op.where(cond, *values))


class _TorchReference:
    """Runs the PyTorch module (or the exported program's module) in eval mode."""

    def __init__(self, module: torch.nn.Module, inputs: list[TensorSpec]):
        self._module, self._names = module, [s.name for s in inputs]

    def __call__(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = self._module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self._names))
        return [t.detach().numpy() for t in torch.utils._pytree.tree_leaves(out)]


def _export(module: torch.nn.Module, args: tuple) -> torch.export.ExportedProgram:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(module, args)
    except Exception as err:  # torch.export raises many exception types for untraceable code
        raise ReforgeError(f"torch.export failed on {type(module).__name__}: {one_line(err)}") from err


def _example_inputs(module: torch.nn.Module, shapes: dict[str, tuple[int, ...]]) -> tuple[torch.Tensor, ...]:
    params = [p for p in inspect.signature(module.forward).parameters.values()
              if p.default is inspect.Parameter.empty
              and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [p.name for p in params]
    check_shape_names(shapes, names)
    missing = [n for n in names if n not in shapes]
    if missing:
        raise ReforgeError(f"give a shape for input '{missing[0]}' of {type(module).__name__}.forward "
                           f"(input_shapes={{'{missing[0]}': (1, 3, 224, 224)}}) or pass example_inputs")
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(shapes[n], generator=gen) for n in names)


def _declared_shapes(program: torch.export.ExportedProgram) -> dict[str, list[int | str]]:
    user = set(program.graph_signature.user_inputs)
    shapes = {}
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user:
            val = node.meta["val"]
            shapes[node.name] = [int(d) if isinstance(d, int) else str(d) for d in val.shape]
    return shapes


def _specialize(program: torch.export.ExportedProgram,
                given: dict[str, tuple[int, ...]], batch: int | None = None) -> torch.export.ExportedProgram:
    """Re-export a program with dynamic dimensions at the shapes the user fixed."""
    declared = _declared_shapes(program)
    check_shape_names(given, list(declared))
    shapes = {n: resolve_shape(n, d, given.get(n), batch) for n, d in declared.items()}
    if all(tuple(d) == shapes[n] for n, d in declared.items()):
        return program
    gen = torch.Generator().manual_seed(0)
    dtypes = {node.name: node.meta["val"].dtype for node in program.graph.nodes if node.name in shapes}
    args = tuple(torch.randn(shapes[n], generator=gen).to(dtypes[n]) for n in declared)
    return _export(program.module(), args)


def _program_inputs(program: torch.export.ExportedProgram) -> list[TensorSpec]:
    specs = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in set(program.graph_signature.user_inputs):
            val = node.meta["val"]
            if not all(isinstance(d, int) for d in val.shape):
                raise ReforgeError(f"input '{node.name}' has dynamic shape {tuple(val.shape)}; fix it with "
                                   f"--input-shape {node.name}:D0xD1x...")
            specs.append(TensorSpec(node.name, tuple(val.shape), str(val.dtype).removeprefix("torch.")))
    return specs
