"""topi_ext/schedules/helpers.py on small functions (numerics against numpy, exact for copies, 1e-6
relative for the fused epilogue), and the package's structure: no module imports another's
underscore names, and every module imports alone in a fresh interpreter (no import cycles)."""

import ast
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tvm
from tvm import s_tir, te, topi

from reforge import backends
from reforge.topi_ext.schedules.helpers import (blocks, divisor_at_most, divisors, divisors_up_to, extents,
                                                inline_epilogue, named, vectorize)

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "topi_ext"


def test_divisors():
    assert divisors(12) == [1, 2, 3, 4, 6, 12]
    assert divisor_at_most(56, 12) == 8 and divisor_at_most(7, 6) == 1
    assert divisors_up_to(48, 16, least=2) == {2, 3, 4, 6, 8, 12, 16}


def _run(func, *arrays, out_shape):
    lib = tvm.compile(tvm.IRModule({"main": func}), target=backends.get("x86").tvm_target)
    out = tvm.runtime.tensor(np.zeros(out_shape, "float32"))
    lib["main"](*[tvm.runtime.tensor(a) for a in arrays], out)
    return out.numpy()


def test_vectorize_splits_the_inner_loop_and_keeps_values():
    x = te.placeholder((64, 48), name="x")
    y = te.compute((64, 48), lambda i, j: x[i, j] * 2.0 + 1.0, name="y")
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    vectorize(sch, named(sch, "y"), 16, min_work=0)
    assert extents(sch, sch.get_loops(named(sch, "y"))) == [64, 3, 16]
    assert "T.vectorized(16)" in sch.mod["main"].script() and "T.parallel" in sch.mod["main"].script()
    a = np.random.default_rng(0).standard_normal((64, 48)).astype("float32")
    np.testing.assert_array_equal(_run(sch.mod["main"], a, out_shape=(64, 48)), a * 2 + 1)


def test_inline_epilogue_folds_same_shape_consumers_only():
    """bias + relu fold into the write-back; a crop of the producer (another shape) stays its own block."""
    x, w = te.placeholder((8, 16), name="x"), te.placeholder((16, 12), name="w")
    mm = topi.nn.matmul(x, w)
    out = topi.nn.relu(mm + 1.0)
    sch = s_tir.Schedule(te.create_prim_func([x, w, out]))
    write_back = sch.cache_write(blocks(sch)[0], 0, "local")
    inline_epilogue(sch, write_back)
    assert len(blocks(sch)) == 2  # the matmul and its write-back with the epilogue
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((8, 16)).astype("float32"), rng.standard_normal((16, 12)).astype("float32")
    want = np.maximum(a @ b + 1, 0)
    got = _run(sch.mod["main"], a, b, out_shape=(8, 12))
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max() * 16

    crop = te.compute((8, 6), lambda i, j: mm[i, j + 1], name="crop")
    sch = s_tir.Schedule(te.create_prim_func([x, w, crop]))
    write_back = sch.cache_write(blocks(sch)[0], 0, "local")
    inline_epilogue(sch, write_back)
    assert [sch.get(b).name_hint for b in blocks(sch)][-1] == "crop"


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(("reforge.topi_ext", *[p for p in rel.parts if p != "__init__"]))


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith("reforge")):
                offenders += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_")]
    assert offenders == []


def _imports(path: pathlib.Path) -> set[str]:
    """The topi_ext modules ``path`` imports anywhere (in functions too), as module names."""
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])]) if node.level else node.module
            found |= {module} | {f"{module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_no_import_cycles_through_the_schedules_or_the_registry():
    """No module of the schedules package, the registry or the tagging module is reachable from
    itself in the import graph of topi_ext (module- and function-level imports)."""
    modules = {_module_name(p): p for p in _modules()}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    for start in sorted(m for m in modules if m.startswith(("reforge.topi_ext.schedules", "reforge.topi_ext.operators",
                                                             "reforge.topi_ext.op_kind"))):
        seen, todo = set(), [start]
        while todo:
            for dep in graph[todo.pop()] - seen:
                assert dep != start, f"{start} imports itself through {sorted(seen)}"
                seen.add(dep)
                todo.append(dep)
    assert graph["reforge.topi_ext.schedules.default"] >= {"reforge.topi_ext.operators"}  # the graph is read


@pytest.mark.parametrize("order", [1, -1])
def test_every_module_imports_in_either_order(order):
    names = [_module_name(p) for p in _modules()][::order]
    done = subprocess.run([sys.executable, "-c", "".join(f"import {n}\n" for n in names)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1]
