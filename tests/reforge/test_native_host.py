"""The Python-free host: reforge's C API (``reforge/native/reforge_runtime.h``) and its command line
``run_vm``, built here with the system compiler against the installed wheels' TVM runtime, run an x86
artifact's ``model.so``.

Reference: ``reforge.load(path).run`` on the same inputs. Tolerance 0 (bit-identical): both run the same
``model.so`` kernels on the same TVM runtime library, one thread each.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tarfile

import numpy as np
import pytest

import reforge
from reforge.cli import main
from reforge.toolchains import NATIVE, host_build_command, host_program
from tests.helpers import SMALLCNN

ENV = dict(os.environ, TVM_NUM_THREADS="1")

# A C99 program over the C API: APP MODEL.so NAME IN.bin OUT.bin DTYPE DIM...; prints the model's
# inputs, then output 0's dtype and shape, and writes output 0 to OUT.bin.
APP_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include "reforge_runtime.h"

static int fail(reforge_model* m) {
  fprintf(stderr, "app: %s\n", reforge_last_error());
  reforge_free(m);
  return 1;
}

int main(int argc, char** argv) {
  reforge_model* m = reforge_load(argv[1], 1);
  if (!m) return fail(m);
  for (int i = 0; i < reforge_num_inputs(m); ++i) printf("input %s\n", reforge_input_name(m, i));
  int ndim = argc - 6;
  int64_t shape[8];
  for (int d = 0; d < ndim; ++d) shape[d] = atoll(argv[6 + d]);
  FILE* in = fopen(argv[3], "rb");
  fseek(in, 0, SEEK_END);
  long size = ftell(in);
  rewind(in);
  char* data = malloc(size);
  if (fread(data, 1, size, in) != (size_t)size) return 2;
  fclose(in);
  int status = reforge_set_input(m, argv[2], data, (size_t)size, argv[5], shape, ndim);
  free(data);
  if (status != 0 || reforge_run(m) != 0) return fail(m);
  const char* dtype;
  const int64_t* out_shape;
  int out_ndim;
  size_t bytes;
  if (reforge_output_info(m, 0, &dtype, &out_ndim, &out_shape, &bytes) != 0) return fail(m);
  printf("output %s", dtype);
  for (int d = 0; d < out_ndim; ++d) printf(" %lld", (long long)out_shape[d]);
  printf("\n");
  char* out = malloc(bytes);
  if (reforge_get_output(m, 0, out, bytes) != 0) return fail(m);
  FILE* f = fopen(argv[4], "wb");
  fwrite(out, 1, bytes, f);
  fclose(f);
  if (reforge_get_output(m, 0, out, bytes - 1) == 0) return 3;  /* a short buffer is refused */
  fprintf(stderr, "short buffer: %s\n", reforge_last_error());
  free(out);
  reforge_free(m);
  return 0;
}
"""


@pytest.fixture(scope="module")
def smallcnn(tmp_path_factory):
    """The x86 artifact of the example model, its model.so, random inputs and the reference outputs."""
    folder = tmp_path_factory.mktemp("native_host")
    path = reforge.compile(SMALLCNN, target="x86").save(str(folder / "smallcnn.tar"))
    with tarfile.open(path) as tar:
        tar.extract("model.so", folder)
    artifact = reforge.load(path)
    rng = np.random.default_rng(0)
    inputs = {s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in artifact.inputs}
    return path, str(folder / "model.so"), inputs, artifact.run(inputs)


def _run(argv, cwd=None):
    return subprocess.run(argv, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300)


def _input_args(inputs, folder):
    args = []
    for i, (name, array) in enumerate(inputs.items()):
        array.tofile(os.path.join(folder, f"in{i}.bin"))
        args += [os.path.join(folder, f"in{i}.bin"), array.dtype.name, "x".join(map(str, array.shape))]
    return args


def test_run_vm_matches_load(smallcnn, tmp_path):
    _, model, inputs, expected = smallcnn
    done = _run([host_program("run_vm"), "--threads", "1", model, str(tmp_path), "2", *_input_args(inputs, tmp_path)])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(expected) + 1 and lines[-1].startswith("time_ms ") and len(lines[-1].split()) == 3
    for k, (name, ref) in enumerate(expected.items()):
        assert lines[k] == f"output {k} {ref.dtype.name} {'x'.join(map(str, ref.shape))}", name
        out = np.fromfile(tmp_path / f"out{k}.bin", dtype=ref.dtype).reshape(ref.shape)
        np.testing.assert_array_equal(out, ref)


def test_run_vm_refuses_a_wrong_input_size(smallcnn, tmp_path):
    _, model, inputs, _ = smallcnn
    name, array = next(iter(inputs.items()))
    args = _input_args(inputs, tmp_path)
    args[2] = "x".join(map(str, array.shape[:-1] + (array.shape[-1] + 1,)))
    done = _run([host_program("run_vm"), model, str(tmp_path), "0", *args])
    assert done.returncode == 2 and done.stdout == ""
    assert f"input '{name}'" in done.stderr and f"{array.nbytes} given" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """APP_C compiled as C by the system C compiler, linked with the C API by host_build_command."""
    folder = tmp_path_factory.mktemp("app")
    (folder / "app.c").write_text(APP_C)
    compiled = _run(["gcc", "-std=c99", "-Wall", "-Werror", f"-I{NATIVE}", "-c", "app.c", "-o", "app.o"], cwd=folder)
    assert compiled.returncode == 0, compiled.stderr
    linked = _run(host_build_command([str(folder / "app.o"), os.path.join(NATIVE, "reforge_runtime.cc")],
                                     str(folder / "app")))
    assert linked.returncode == 0, linked.stderr
    return str(folder / "app")


def test_c_program_matches_load(smallcnn, app, tmp_path):
    _, model, inputs, expected = smallcnn
    (name, array), = inputs.items()
    (out_name, ref), = expected.items()
    array.tofile(tmp_path / "in.bin")
    done = _run([app, model, name, str(tmp_path / "in.bin"), str(tmp_path / "out.bin"), array.dtype.name,
                 *map(str, array.shape)])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"input {name}", f"output {ref.dtype.name} {' '.join(map(str, ref.shape))}"]
    np.testing.assert_array_equal(np.fromfile(tmp_path / "out.bin", dtype=ref.dtype).reshape(ref.shape), ref)
    assert f"output 0 holds {ref.nbytes} bytes; the buffer has {ref.nbytes - 1}" in done.stderr


def test_c_program_names_a_wrong_input(smallcnn, app, tmp_path):
    _, model, inputs, _ = smallcnn
    (name, array), = inputs.items()
    array.tofile(tmp_path / "in.bin")
    done = _run([app, model, "pixels", str(tmp_path / "in.bin"), str(tmp_path / "out.bin"), array.dtype.name,
                 *map(str, array.shape)])
    assert done.returncode == 1
    assert done.stderr.strip() == f"app: reforge_set_input: the model has no input 'pixels' (its inputs: {name})"


def test_c_program_reports_a_missing_model(app, tmp_path):
    done = _run([app, str(tmp_path / "absent.so"), "x", "in.bin", "out.bin", "float32", "1"])
    assert done.returncode == 1 and "absent.so" in done.stderr


def test_inspect_commands_build_and_run_the_artifact(smallcnn, tmp_path, capsys):
    """The two commands `reforge inspect` prints, run verbatim in a fresh folder, give load's outputs."""
    path, _, inputs, expected = smallcnn
    assert main(["inspect", path]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("run without Python"))
    build, run = (ln.strip() for ln in lines[start + 1:start + 3])
    assert shlex.split(build)[-1] == "run_vm" and run.startswith(f"tar -xf {shlex.quote(path)} model.so && ./run_vm")
    _input_args(inputs, tmp_path)
    for command in (build, run):
        done = subprocess.run(command, shell=True, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stderr
    for k, ref in enumerate(expected.values()):
        np.testing.assert_array_equal(np.fromfile(tmp_path / f"out{k}.bin", dtype=ref.dtype).reshape(ref.shape), ref)


def test_a_cached_host_build_belongs_to_its_runtime(monkeypatch, tmp_path):
    """The cached run_vm's rpath names the runtime folders it was linked to: a Python environment whose
    runtime lives elsewhere must build its own (here it tries to, with a compiler that does not exist),
    never reuse a program whose libraries may be gone."""
    from reforge import errors, toolchains

    assert os.path.exists(host_program())  # this environment's build, cached
    monkeypatch.setattr(toolchains, "host_runtime_dirs", lambda: [str(tmp_path)])
    monkeypatch.setattr(toolchains, "HOST_CXX", "reforge-no-such-compiler")
    with pytest.raises(errors.ReforgeError, match="reforge-no-such-compiler"):
        toolchains.host_program()
