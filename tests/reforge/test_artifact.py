"""The artifact .tar: round trip, manifest contents, and refusal of tampered or hostile archives."""

import hashlib
import io
import json
import tarfile

import numpy as np
import onnx
import pytest

import reforge
from reforge import ReforgeError, backends
from tests.helpers import conv_bn_relu_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("art")
    onnx.save(conv_bn_relu_model(), folder / "m.onnx")
    art = reforge.compile(str(folder / "m.onnx"))
    return art, art.save(str(folder / "m.tar"))


def _members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _write(path, members: dict[str, bytes], kinds: dict[str, bytes] | None = None):
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            if kinds and name in kinds:
                info.type = kinds[name]
                info.size, payload = 0, b""
                info.linkname = "/etc/passwd"
            tar.addfile(info, io.BytesIO(payload))


def test_round_trip_gives_identical_outputs(saved):
    art, path = saved
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype("float32")
    np.testing.assert_array_equal(reforge.load(path).run({"image.in": x})["y"], art.run({"image.in": x})["y"])


def test_repeated_runs_keep_their_own_outputs(saved):
    """``run`` copies each call's inputs into the same device tensors: a second call with other
    inputs gives its own outputs and leaves the first call's arrays as they were."""
    art, path = saved
    rng = np.random.default_rng(1)
    x1, x2 = (rng.standard_normal((1, 3, 8, 8)).astype("float32") for _ in range(2))
    first = art.run({"image.in": x1})["y"]
    kept = first.copy()
    second = art.run({"image.in": x2})["y"]
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_array_equal(second, reforge.load(path).run({"image.in": x2})["y"])
    assert not np.array_equal(first, second)


def test_manifest_describes_the_module(saved):
    _, path = saved
    members = _members(path)
    assert set(members) == {"manifest.json", "model.so"}
    manifest = json.loads(members["manifest.json"])
    assert manifest["format"] == "reforge-artifact/1"
    assert manifest["inputs"] == [{"name": "image.in", "shape": [1, 3, 8, 8], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "y", "shape": [1, 4, 8, 8], "dtype": "float32"}]
    assert manifest["target"]["name"] == "x86" and manifest["target"]["tvm"]["kind"] == "llvm"
    assert [p["name"] for p in manifest["passes"]] == ["remove-noops", "fold-masks", "fold-constants", "fold-batchnorm",
                                                      "fold-channel-tile", "complex-conv", "merge-branches",
                                                      "fuse-fplus", "prune-channels", "drop-padding-taps", "fwht",
                                                      "binarize", "fft-conv", "sparse", "dead-code"]
    fold = next(p for p in manifest["passes"] if p["name"] == "fold-batchnorm")
    assert fold["rewrites"]["batchnorm as affine"] == 1 and "nn.batch_norm" not in fold["after"]["ops"]
    assert fold["before"]["macs"] == fold["after"]["macs"] == 4 * 8 * 8 * 3 * 9
    assert manifest["files"]["model.so"] == hashlib.sha256(members["model.so"]).hexdigest()
    assert manifest["versions"]["tvm"].startswith("0.27")


def test_tampered_library_is_refused(saved, tmp_path):
    members = _members(saved[1])
    members["model.so"] = members["model.so"][:-1] + bytes([members["model.so"][-1] ^ 1])
    _write(tmp_path / "t.tar", members)
    with pytest.raises(ReforgeError, match=r"was modified after compilation: model.so does not match its SHA-256"):
        reforge.load(str(tmp_path / "t.tar"))


@pytest.mark.parametrize("extra, kinds, message", [
    ({"../evil.sh": b"echo"}, None, r"unexpected member '../evil.sh'"),
    ({"/tmp/abs": b"x"}, None, r"unexpected member '/tmp/abs'"),
    ({"lib.so": b""}, {"lib.so": tarfile.SYMTYPE}, r"unexpected member 'lib.so'"),
])
def test_hostile_members_are_refused(saved, tmp_path, extra, kinds, message):
    _write(tmp_path / "h.tar", {**_members(saved[1]), **extra}, kinds)
    with pytest.raises(ReforgeError, match=message):
        reforge.load(str(tmp_path / "h.tar"))


def test_library_as_a_link_is_refused(saved, tmp_path):
    members = _members(saved[1])
    _write(tmp_path / "l.tar", members, {"model.so": tarfile.SYMTYPE})
    with pytest.raises(ReforgeError, match=r"unexpected member 'model.so'"):
        reforge.load(str(tmp_path / "l.tar"))


def test_artifact_for_missing_cpu_features_is_refused_at_run(saved, tmp_path, capsys):
    from reforge.cli import main

    members = _members(saved[1])
    manifest = json.loads(members["manifest.json"])
    manifest["target"].update(name="x86-future", features=["avx2", "avx1024-imaginary"])
    members["manifest.json"] = json.dumps(manifest).encode()
    _write(tmp_path / "f.tar", members)
    art = reforge.load(str(tmp_path / "f.tar"))  # inspecting it is fine
    with pytest.raises(ReforgeError, match=r"built for target 'x86-future' and needs avx1024-imaginary"):
        art.run(np.zeros((1, 3, 8, 8), "float32"))
    assert main(["run", str(tmp_path / "f.tar")]) == 2
    assert "needs avx1024-imaginary, which this machine lacks" in capsys.readouterr().err


@pytest.mark.parametrize("payload, message", [
    (b"garbage" * 100, r"is not a reforge artifact \(not a tar archive\)"),
])
def test_not_an_artifact(tmp_path, payload, message):
    (tmp_path / "x.tar").write_bytes(payload)
    with pytest.raises(ReforgeError, match=message):
        reforge.load(str(tmp_path / "x.tar"))


def test_missing_manifest(saved, tmp_path):
    _write(tmp_path / "n.tar", {"model.so": _members(saved[1])["model.so"]})
    with pytest.raises(ReforgeError, match=r"is not a reforge artifact: it has no manifest.json"):
        reforge.load(str(tmp_path / "n.tar"))


@pytest.mark.parametrize("inputs, message", [
    ({"x": np.zeros((1, 3, 8, 8), "float32")}, r"unknown input 'x'; the module's inputs are: image.in"),
    ({}, r"missing input 'image.in'"),
    ({"image.in": np.zeros((1, 3, 8, 9), "float32")}, r"has shape \[1, 3, 8, 9\]; the module was compiled for \[1, 3, 8, 8\]"),
    ({"image.in": np.zeros((1, 3, 8, 8), "float64")}, r"has dtype float64; the module expects float32"),
])
def test_wrong_inputs_are_refused(saved, inputs, message):
    with pytest.raises(ReforgeError, match=message):
        saved[0].run(inputs)


def test_cross_compiled_target_records_its_features(onnx_path):
    target = backends.get("x86-avx512")
    art = reforge.compile(onnx_path, target="x86-avx512", verify=True)
    assert art.manifest["target"]["tvm"]["mcpu"] == "icelake-server"
    assert {"avx512f", "avx512vpopcntdq"} <= set(art.manifest["target"]["features"])
    stages = [c["stage"] for c in art.manifest["verification"]["checks"]]
    runnable = target.runs_on_host_cpu()
    assert ("final module" in stages) == runnable
    assert (art.manifest["verification"]["skipped"] is None) == runnable
