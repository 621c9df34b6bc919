"""torch.fft graphs to real Relax: a complex tensor becomes its ``view_as_real`` pair ``[..., 2]``.

After torch.export's core-ATen decompositions the FFT API reads

    rfft2 / rfftn           aten._fft_r2c(x, dim, normalization, onesided)
    irfft2 / irfftn         aten._fft_c2r(z, dim, normalization, last_dim_size)
    fft2 / ifft2            aten._to_copy(x, dtype=complex), aten._fft_c2c(z, dim, normalization, forward)
    .real / .imag           aten.view_as_real, then aten.select(·, -1, 0 | 1)
    view_as_complex, torch.complex(re, im), complex ×, +, −, abs

(normalization 0: none, 1: 1/√n, 2: 1/n, per transformed axis). TVM's importer has no complex
dtype; reforge registers converters for exactly these operators through its ``custom_convert_map``.
view_as_real / view_as_complex are identities on the pair, transforms are products with constant DFT
matrices (``topi_ext/dft.py``), ``(a + ib)(c + id) = (ac − bd) + i(ad + bc)``.

Folding: ``_fft_c2r(_fft_r2c(u) ⊙ M)`` over the last two axes, with M computable from the program's
parameters, buffers and constants alone (a fixed multiplier such as ``|ξ|^{2s}``, or a learned one,
fixed at inference), is one linear operator (``topi_ext/fourier_multiplier.py``); PyTorch itself
evaluates M at import.

Refused, one line naming node and operator: complex model inputs, outputs and parameters, transforms
over axes other than the last one or two, any other operator that reads or makes a complex tensor.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from itertools import permutations

import numpy as np
import torch
from torch import fx
from tvm import relax

from reforge.errors import ReforgeError
from reforge.topi_ext.dft import emit_dft_axis, emit_irdft_last, emit_rdft_last, norm_scale
from reforge.topi_ext.fourier_multiplier import emit_fourier_multiplier

R2C, C2R, C2C = "_fft_r2c.default", "_fft_c2r.default", "_fft_c2c.default"


def has_complex(program: torch.export.ExportedProgram) -> bool:
    return any(_is_complex(n) for n in program.graph.nodes)


def _is_complex(arg) -> bool:
    val = arg.meta.get("val") if isinstance(arg, fx.Node) else None
    return isinstance(val, torch.Tensor) and val.is_complex()


def _name(node: fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target))


def _shape(arg) -> list[int]:
    return [int(d) for d in arg.meta["val"].shape]


def _dims(node: fx.Node) -> list[int]:
    rank = len(_shape(node.args[0]))
    return sorted(int(d) % rank for d in node.args[1])


class ComplexLowering:
    """Checks a decomposed program's complex subgraphs and converts them for TVM's importer."""

    def __init__(self, program: torch.export.ExportedProgram):
        self.program = program
        values = {name: t.detach() for name, t in {**program.state_dict, **program.constants}.items()
                  if isinstance(t, torch.Tensor)}
        self._placeholders = {s.arg.name: values.get(s.target) for s in program.graph_signature.input_specs}
        self._constants: dict[fx.Node, torch.Tensor | None] = {}
        self.folded = 0
        self._check()

    def convert_map(self) -> dict[str, Callable]:
        """``custom_convert_map`` entries: complex nodes here, real ones through TVM's own converters."""
        binary = {"mul": (_mul, relax.op.multiply, operator.mul), "add": (_add(relax.op.add), relax.op.add, operator.add),
                  "sub": (_add(relax.op.subtract), relax.op.subtract, operator.sub)}
        table = {f"{name}.{kind}": self._dispatch(fn, lambda imp, o=rop, p=pyop: imp._binary_op(o, p))
                 for name, (fn, rop, pyop) in binary.items() for kind in ("Tensor", "Scalar")}
        return {**table, R2C: self._r2c, C2R: self._c2r, C2C: self._c2c,
                "view_as_real.default": _identity, "view_as_complex.default": _identity,
                "clone.default": _identity, "complex.default": _complex,
                "abs.default": self._dispatch(_abs, lambda imp: imp._unary_op(relax.op.abs)),
                "_to_copy.default": self._dispatch(_to_complex, lambda imp: imp._to_copy),
                "slice.Tensor": self._dispatch(_slice, lambda imp: imp._slice),
                "constant_pad_nd.default": self._dispatch(_pad, lambda imp: imp._constant_pad_nd)}

    def _dispatch(self, complex_fn: Callable, default: Callable) -> Callable:
        return lambda node, imp: complex_fn(node, imp) if self._involved(node) else default(imp)(node)

    @staticmethod
    def _involved(node: fx.Node) -> bool:
        return _is_complex(node) or any(_is_complex(a) for a in node.all_input_nodes)

    # ------------------------------------------------------------------------- checks

    def _check(self) -> None:
        user = set(self.program.graph_signature.user_inputs)
        convertible = set(self.convert_map())
        for node in self.program.graph.nodes:
            if node.op == "placeholder" and _is_complex(node):
                what = "input" if node.name in user else "parameter / buffer"
                raise ReforgeError(f"complex {what} '{node.name}' is not supported: give it as a real [..., 2] "
                                   "tensor and call torch.view_as_complex in forward")
            if node.op == "output":
                for arg in torch.utils._pytree.tree_leaves(node.args):
                    if _is_complex(arg):
                        raise ReforgeError(f"complex output '{arg.name}' is not supported: return "
                                           "torch.view_as_real(·), .real, .imag or .abs() of it")
            if node.op != "call_function" or not self._involved(node):
                continue
            name = _name(node)
            if name not in convertible or (name == "_to_copy.default" and not _is_complex(node)):
                raise ReforgeError(f"unsupported operator 'aten.{name}' on a complex tensor at node '{node.name}'")
            if name in (R2C, C2R, C2C):
                dims, rank = _dims(node), len(_shape(node.args[0]))
                if len(dims) > 2 or dims != list(range(rank - len(dims), rank)):
                    raise ReforgeError(f"'aten.{name}' at node '{node.name}' transforms dims {dims} of a {rank}-D "
                                       "tensor: only the last one or two dims are supported")
            if name == "constant_pad_nd.default" and (node.args[2:] or [0])[0] != 0:
                raise ReforgeError(f"unsupported nonzero pad value of 'aten.{name}' on a complex tensor "
                                   f"at node '{node.name}'")
            if node.kwargs.get("alpha", 1) != 1:
                raise ReforgeError(f"unsupported alpha={node.kwargs['alpha']} of 'aten.{name}' on a complex tensor "
                                   f"at node '{node.name}'")

    # ------------------------------------------------------------------------- transforms

    def _r2c(self, node: fx.Node, imp) -> relax.Expr:
        x, norm, onesided = imp.env[node.args[0]], int(node.args[2]), bool(node.args[3])
        shape, dims = _shape(node.args[0]), _dims(node)
        w = shape[-1]
        z = emit_rdft_last(imp.block_builder, x, w // 2 + 1 if onesided else w, norm_scale(norm, w))
        for d in dims[:-1]:
            z = emit_dft_axis(imp.block_builder, z, d, True, norm_scale(norm, shape[d]))
        return z

    def _c2c(self, node: fx.Node, imp) -> relax.Expr:
        z, norm, forward = imp.env[node.args[0]], int(node.args[2]), bool(node.args[3])
        shape = _shape(node.args[0])
        for d in _dims(node):
            z = emit_dft_axis(imp.block_builder, z, d, forward, norm_scale(norm, shape[d]))
        return z

    def _c2r(self, node: fx.Node, imp) -> relax.Expr:
        fold = self._fold(node)
        if fold is not None:
            u, m, scale_h, scale_w = fold
            self.folded += 1
            return emit_fourier_multiplier(imp.block_builder, imp.env[u], m, scale_h, scale_w)
        z, norm, length = imp.env[node.args[0]], int(node.args[2]), int(node.args[3])
        shape, dims = _shape(node.args[0]), _dims(node)
        for d in dims[:-1]:
            z = emit_dft_axis(imp.block_builder, z, d, False, norm_scale(norm, shape[d]))
        return emit_irdft_last(imp.block_builder, z, length, norm_scale(norm, length))

    # ------------------------------------------------------------------------- folding

    def _fold(self, c2r: fx.Node) -> tuple[fx.Node, np.ndarray, float, float] | None:
        """``(u, M, scale_h, scale_w)`` when ``c2r`` is ``irfft2(rfft2(u) ⊙ M)``, M constant, output
        size = u's size."""
        prod = c2r.args[0]
        if not (isinstance(prod, fx.Node) and _name(prod) == "mul.Tensor") or len(_dims(c2r)) != 2:
            return None
        for spec, other in permutations(prod.args):
            if not (isinstance(spec, fx.Node) and _name(spec) == R2C and spec.args[3] and _dims(spec) == _dims(c2r)):
                continue
            h, w = _shape(spec.args[0])[-2:]
            m = self._constant(other)
            if m is None or int(c2r.args[3]) != w or _shape(prod) != _shape(spec):
                continue
            rank = len(_shape(spec))
            m = np.asarray(torch.as_tensor(m).resolve_conj().numpy(), np.complex128)
            m = m.reshape((1,) * (rank - m.ndim) + m.shape)
            n_fwd, n_inv = int(spec.args[2]), int(c2r.args[2])
            return (spec.args[0], m, norm_scale(n_fwd, h) * norm_scale(n_inv, h),
                    norm_scale(n_fwd, w) * norm_scale(n_inv, w))
        return None

    def _constant(self, arg):
        """The value of ``arg`` when it depends on parameters, buffers and constants only, else None."""
        if not isinstance(arg, fx.Node):
            return arg if isinstance(arg, (int, float, complex)) else None
        if arg not in self._constants:
            self._constants[arg] = self._evaluate(arg)
        return self._constants[arg]

    def _evaluate(self, node: fx.Node):
        if node.op == "placeholder":
            return self._placeholders.get(node.name)
        if node.op != "call_function":
            return None
        inputs = {a: self._constant(a) for a in node.all_input_nodes}
        if any(v is None for v in inputs.values()):
            return None
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda a: inputs[a])
        with torch.no_grad():
            return node.target(*args, **kwargs)


# ----------------------------------------------------------------------------- complex elementwise


def _identity(node: fx.Node, imp) -> relax.Expr:
    return imp.env[node.args[0]]


def _parts(bb, z) -> tuple[relax.Expr, relax.Expr]:
    """Real and imaginary parts of pair tensor z, each ``[..., 1]``."""
    parts = bb.emit(relax.op.split(z, 2, axis=-1))
    return bb.emit(relax.TupleGetItem(parts, 0)), bb.emit(relax.TupleGetItem(parts, 1))


def _pair(bb, re, im) -> relax.Expr:
    return bb.emit(relax.op.concat([re, im], axis=-1))


def _pair_dtype(node: fx.Node) -> str:
    return {torch.complex64: "float32", torch.complex128: "float64"}[node.meta["val"].dtype]


def _promote(bb, arg, dtype: str, imp) -> relax.Expr:
    """An operand as a pair tensor: complex ones as they are, real tensors and scalars with im = 0."""
    if _is_complex(arg):
        return imp.env[arg]
    if not isinstance(arg, fx.Node):
        return relax.const(np.array([complex(arg).real, complex(arg).imag], dtype), dtype)
    re = bb.emit(relax.op.expand_dims(bb.emit(relax.op.astype(imp.env[arg], dtype)), -1))
    return _pair(bb, re, bb.emit(relax.op.zeros_like(re)))


def _mul(node: fx.Node, imp) -> relax.Expr:
    """``(a + ib)(c + id) = (ac − bd) + i(ad + bc)``; a real factor scales both parts."""
    bb, emit, (a, b) = imp.block_builder, imp.block_builder.emit, node.args[:2]
    real = [x for x in (a, b) if not (_is_complex(x) or isinstance(x, complex))]
    if real:
        z, r = imp.env[b if real[0] is a else a], real[0]
        r = emit(relax.op.expand_dims(imp.env[r], -1)) if isinstance(r, fx.Node) else relax.const(r, str(z.ty.dtype))
        return emit(relax.op.multiply(z, r))
    dtype = _pair_dtype(node)
    (ar, ai), (br, bi) = (_parts(bb, _promote(bb, x, dtype, imp)) for x in (a, b))
    mul = relax.op.multiply
    re = emit(relax.op.subtract(emit(mul(ar, br)), emit(mul(ai, bi))))
    im = emit(relax.op.add(emit(mul(ar, bi)), emit(mul(ai, br))))
    return _pair(bb, re, im)


def _add(fn: Callable) -> Callable:
    """Complex ``+`` / ``−`` on pairs (a real operand has im = 0)."""
    def convert(node: fx.Node, imp) -> relax.Expr:
        bb = imp.block_builder
        return bb.emit(fn(*(_promote(bb, a, _pair_dtype(node), imp) for a in node.args[:2])))
    return convert


def _abs(node: fx.Node, imp) -> relax.Expr:
    z = imp.env[node.args[0]]
    bb = imp.block_builder
    return bb.emit(relax.op.sqrt(bb.emit(relax.op.sum(bb.emit(relax.op.multiply(z, z)), axis=[-1]))))


def _complex(node: fx.Node, imp) -> relax.Expr:
    bb = imp.block_builder
    shape = _shape(node) + [1]
    re, im = (bb.emit(relax.op.broadcast_to(bb.emit(relax.op.expand_dims(imp.env[a], -1)), shape)) for a in node.args)
    return _pair(bb, re, im)


def _slice(node: fx.Node, imp) -> relax.Expr:
    """``z[..., start:end:step, ...]`` along a complex axis (the pair axis stays last)."""
    shape = _shape(node.args[0])
    dim, start, end, step = (node.args[i] if i < len(node.args) else d for i, d in enumerate((0, None, None, 1), 1))
    dim %= len(shape)
    start, end = slice(start, end, step).indices(shape[dim])[:2]
    return imp.block_builder.emit(relax.op.strided_slice(imp.env[node.args[0]], [dim], [start], [end], [step]))


def _pad(node: fx.Node, imp) -> relax.Expr:
    """Zero padding of complex axes: torch's ``[before, after]`` pairs run from the last axis back."""
    pad, rank = list(node.args[1]), len(_shape(node.args[0]))
    width = [0] * (2 * rank + 2)
    for i in range(0, len(pad), 2):
        axis = rank - 1 - i // 2
        width[2 * axis:2 * axis + 2] = pad[i:i + 2]
    return imp.block_builder.emit(relax.op.nn.pad(imp.env[node.args[0]], width, "constant", 0.0))


def _to_complex(node: fx.Node, imp) -> relax.Expr:
    """A real tensor cast to complex gets im = 0; complex to complex keeps the pair."""
    bb, src, dtype = imp.block_builder, node.args[0], _pair_dtype(node)
    z = _promote(bb, src, dtype, imp)
    return z if str(z.ty.dtype) == dtype else bb.emit(relax.op.astype(z, dtype))
