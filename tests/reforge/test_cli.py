"""The reforge command line: success paths, and user mistakes as one line on stderr with exit 2
(verification failures exit 3). Outputs are checked against onnxruntime: max|err| <= 1e-4*max|ref|."""

import dataclasses
import json
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import reforge
from reforge.bench import baseline_runners
from reforge.cli import main
from reforge.frontend import load
from reforge.passes import registry
from reforge.profiling import summarize
from tests.helpers import make_model, profile_table

X = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype("float32")


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(result, code, pattern):
    got, _out, err = result
    assert got == code, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("reforge: error: ")
    assert re.search(pattern, err), err


@pytest.fixture
def artifact(tmp_path, onnx_path, capsys):
    path = tmp_path / "m.tar"
    assert cli(capsys, "compile", onnx_path, "-o", path)[0] == 0
    return path


def test_compile_verify_report(tmp_path, onnx_path, capsys):
    code, out, _ = cli(capsys, "compile", onnx_path, "-o", tmp_path / "m.tar", "--verify",
                       "--report", tmp_path / "r.json")
    assert code == 0
    assert "fold-batchnorm" in out and re.search(r"final module +onnxruntime", out)  # columns fit the longest name
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verification"]["passed"] is True
    assert [c["stage"] for c in report["verification"]["checks"]] == [
        "import", "remove-noops", "fold-masks", "fold-constants", "fold-batchnorm", "fold-channel-tile", "complex-conv",
        "merge-branches", "fuse-fplus", "prune-channels", "drop-padding-taps", "fwht", "binarize", "fft-conv", "sparse",
        "dead-code", "final module"]


def test_run_writes_outputs_matching_onnxruntime(tmp_path, onnx_path, artifact, capsys):
    np.save(tmp_path / "x.npy", X)
    code, out, _ = cli(capsys, "run", artifact, "--inputs", tmp_path / "x.npy", "-o", tmp_path / "y.npz",
                       "--print-time", "--repeat", 5)
    assert code == 0 and "time over 5 runs (ms): mean" in out
    ref = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(None, {"image.in": X})[0]
    y = np.load(tmp_path / "y.npz")["y"]
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()


def test_run_profile_times_every_kernel_call(artifact, capsys):
    code, out, _ = cli(capsys, "run", artifact, "--profile", "--repeat", 5)
    assert code == 0 and "profile: median of 5 runs" in out
    kernels, totals = profile_table(out)
    calls: dict[str, int] = {}  # the VM's own count of its kernel calls, from an instrument of our own

    def count(_func, name, before, _ret, *_args):
        if before and not name.startswith("vm.builtin."):
            calls[name] = calls.get(name, 0) + 1
        return 0

    art = reforge.load(str(artifact))
    art.runner.vm["set_instrument"](count)
    art.run(X)
    assert {n: c for n, (c, _ms) in kernels.items()} == calls and len(calls) >= 3
    assert all(ms > 0 for _c, ms in kernels.values())
    assert totals["all kernels"] == pytest.approx(sum(ms for _c, ms in kernels.values()), abs=1e-3 * len(kernels))
    assert totals["all kernels"] + totals["outside kernels"] == pytest.approx(totals["run"], abs=2e-3)


def test_profile_takes_each_kernels_median_over_runs():
    ms = 1e-3
    runs = [{"a": [1 * ms, 2 * ms], "b": [3 * ms]}, {"a": [2 * ms, 2 * ms], "b": [1 * ms]},
            {"a": [3 * ms, 3 * ms], "b": [2 * ms]}]
    prof = summarize(runs, [9.0, 7.0, 8.0])
    assert [(k.name, k.calls, k.ms) for k in prof.kernels] == [("a", 2, pytest.approx(4.0)),
                                                                ("b", 1, pytest.approx(2.0))]
    assert prof.run_ms == 8.0 and prof.runs == 3 and prof.kernel_ms == pytest.approx(6.0)


def test_inspect_and_passes(artifact, capsys):
    code, out, _ = cli(capsys, "inspect", artifact)
    assert code == 0 and "model.so  sha256 " in out and "image.in: float32[1, 3, 8, 8]" in out
    code, out, _ = cli(capsys, "inspect", artifact, "--json")
    assert json.loads(out)["format"] == "reforge-artifact/1"
    code, out, _ = cli(capsys, "passes")
    for info in registry.PASSES.values():
        assert info.name in out and info.paper in out


def test_opt_levels_and_pass_selection(tmp_path, onnx_path, capsys):
    for argv, expected in [(["-O0"], []),
                           (["-O0", "--enable-pass", "fold-batchnorm"], ["fold-constants", "fold-batchnorm"]),
                           (["--disable-pass", "remove-noops"],
                            ["fold-masks", "fold-constants", "fold-batchnorm", "fold-channel-tile", "complex-conv",
                             "merge-branches", "fuse-fplus", "prune-channels", "drop-padding-taps", "fwht",
                             "binarize", "fft-conv", "sparse", "dead-code"]),
                           (["--passes", "dead-code"], ["dead-code"])]:
        code, _, err = cli(capsys, "compile", onnx_path, "-o", tmp_path / "m.tar", "--report", tmp_path / "r.json",
                           *argv)
        assert code == 0, err
        assert [p["name"] for p in json.loads((tmp_path / "r.json").read_text())["passes"]] == expected


def test_bench_json(tmp_path, onnx_path, capsys):
    code, out, _ = cli(capsys, "bench", onnx_path, "--repeat", 20, "--against", "onnxruntime,openvino,torch",
                       "--json", tmp_path / "b.json")
    assert code == 0 and "reforge speed-up" in out and re.search(r"^openvino +\d", out, re.M)
    results = {r["runtime"]: r for r in json.loads((tmp_path / "b.json").read_text())["results"]}
    assert results["reforge"]["runs"] == results["onnxruntime"]["runs"] == results["openvino"]["runs"] == 20
    assert results["onnxruntime"]["rel_err_vs_reforge"] < 1e-4
    assert results["openvino"]["rel_err_vs_reforge"] < 1e-4  # f32 inference precision, not bf16
    assert "no PyTorch module" in results["torch"]["unavailable"]


def test_openvino_unavailable_is_a_reason(onnx_path, monkeypatch, capsys):
    """OpenVINO missing, or a model that is not ONNX: its row of the table says why in one line, the rest run."""
    imported = load(onnx_path)
    not_onnx = baseline_runners(onnx_path, dataclasses.replace(imported, source="torch"), ["openvino"], 1)
    assert not_onnx["openvino"] == "the model is not an ONNX file; OpenVINO runs the ONNX file only"
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    code, out, err = cli(capsys, "bench", onnx_path, "--repeat", 20, "--against", "onnxruntime,openvino")
    assert code == 0 and "Traceback" not in out + err
    assert re.search(r"^openvino +- +- +- +- +unavailable: openvino is not installed \(pip install openvino\)$",
                     out, re.M), out
    assert re.search(r"^onnxruntime +\d", out, re.M), out


def _unsupported_model(path):
    node = helper.make_node("FrobnicateV2", ["x"], ["y"], name="block3/frob")
    onnx.save(make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]), path)
    return path


@pytest.mark.parametrize("argv, pattern", [
    (["compile", "missing.onnx", "-o", "m.tar"], r"model file 'missing.onnx' not found"),
    (["compile", "{bad}", "-o", "m.tar"], r"is not a valid ONNX file"),
    (["compile", "{unsupported}", "-o", "m.tar"], r"unsupported ONNX op 'FrobnicateV2' at node 'block3/frob'"),
    (["compile", "{model}", "-o", "m.tar", "--input-shape", "image.in=1x3"], r"bad --input-shape 'image.in=1x3'"),
    (["compile", "{model}", "-o", "m.tar", "--input-shape", "x:1x3x8x8"], r"unknown input 'x'"),
    (["compile", "{model}", "-o", "m.tar", "--enable-pass", "fold-everything"], r"unknown pass 'fold-everything'"),
    (["compile", "{model}", "-o", "m.tar", "--target", "z80"], r"unknown target 'z80'"),
    (["compile", "{model}", "-o", "m.tar", "-O7"], r"unknown optimization level -O7"),
    (["compile", "{model}", "-o", "no/such/dir/m.tar"], r"folder .* does not exist"),
    (["compile", "{model}"], r"the following arguments are required: -o/--output"),
    (["run", "missing.tar"], r"artifact 'missing.tar' not found"),
    (["run", "{bad}"], r"is not a reforge artifact"),
    (["run", "{artifact}", "--inputs", "{wrong_name}"], r"unknown input 'x'; the module's inputs are: image.in"),
    (["run", "{artifact}", "--inputs", "{wrong_shape}"], r"has shape \[1, 3, 4, 4\]; the module was compiled for"),
    (["run", "{artifact}", "--inputs", "{wrong_dtype}"], r"has dtype float64; the module expects float32"),
    (["run", "{artifact}", "--inputs", "{bad}"], r"cannot read inputs"),
    (["run", "{artifact}", "--profile", "--repeat", "0"], r"--repeat must be at least 1"),
    (["bench", "{model}", "--against", "tensorflow"], r"unknown baseline 'tensorflow'"),
    (["compile", "{model}", "-o", "m.tar", "--tuning-records", "nope.json"], r"tuning records 'nope.json' not found"),
    (["tune", "{model}", "--trials", "0", "-o", "r.json"], r"--trials must be at least 1"),
    (["tune", "missing.onnx", "--trials", "4", "-o", "r.json"], r"model file 'missing.onnx' not found"),
    (["bench", "{model}", "--repeat", "5"], r"at least 20 runs"),
])
def test_user_mistakes_exit_2_with_one_line(tmp_path, onnx_path, artifact, capsys, argv, pattern):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07\x12\xff\xff\xff")
    np.savez(tmp_path / "wrong_name.npz", x=X)
    np.savez(tmp_path / "wrong_shape.npz", **{"image.in": X[:, :, :4, :4]})
    np.savez(tmp_path / "wrong_dtype.npz", **{"image.in": X.astype("float64")})
    files = {"bad": tmp_path / "bad.onnx", "model": onnx_path, "artifact": artifact,
             "unsupported": _unsupported_model(tmp_path / "u.onnx"), "wrong_name": tmp_path / "wrong_name.npz",
             "wrong_shape": tmp_path / "wrong_shape.npz", "wrong_dtype": tmp_path / "wrong_dtype.npz"}
    argv = [str(tmp_path / a) if a == "m.tar" else a.format(**files) for a in argv]
    assert_user_error(cli(capsys, *argv), 2, pattern)


def test_verification_failure_exits_3(tmp_path, onnx_path, capsys, monkeypatch):
    strict = dataclasses.replace(registry.PASSES["fold-batchnorm"], rtol=-1.0)  # any error fails
    monkeypatch.setitem(registry.PASSES, "fold-batchnorm", strict)
    code, out, err = cli(capsys, "compile", onnx_path, "-o", tmp_path / "m.tar", "--verify")
    assert code == 3 and "FAIL" in out
    assert_user_error((code, out, err), 3, r"verification failed at 'fold-batchnorm': relative error "
                                           r"\S+ exceeds its tolerance -1$")
    assert not (tmp_path / "m.tar").exists()


def test_internal_error_is_one_line_and_verbose_shows_traceback(onnx_path, tmp_path, capsys, monkeypatch):
    def boom(*_a, **_k):
        raise RuntimeError("simulated bug\nsecond line")

    monkeypatch.setattr("reforge.pipeline.build_fused", boom)
    code, _, err = cli(capsys, "compile", onnx_path, "-o", tmp_path / "m.tar")
    assert code == 1 and err == ("reforge: internal error: simulated bug "
                                 "(rerun with --verbose for the traceback)\n")
    with pytest.raises(RuntimeError, match="simulated bug"):
        main(["--verbose", "compile", onnx_path, "-o", str(tmp_path / "m.tar")])


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "reforge", "compile", str(tmp_path / "nope.onnx"), "-o",
                           str(tmp_path / "m.tar")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr == f"reforge: error: model file '{tmp_path / 'nope.onnx'}' not found\n"


def test_fft_conv_compile_prints_no_tvm_log_lines(tmp_path):
    """A 15×15 conv goes through fft-conv, whose window `take`s make TVM log a warning each time it
    legalizes them (build and --verify); the terminal shows reforge's report only."""
    w = np.random.default_rng(0).standard_normal((16, 16, 15, 15)).astype("float32")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[7] * 4)], "big-kernel",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "big.onnx"
    onnx.save(model, path)
    proc = subprocess.run([sys.executable, "-m", "reforge", "compile", str(path), "-o", str(tmp_path / "big.tar"),
                           "--verify"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "conv 15x15 to FFT" in proc.stdout
    assert proc.stderr == "", proc.stderr
