"""The pass table and select(): -O levels, enable / disable, explicit lists, prerequisites."""

from __future__ import annotations

import re

import pytest
import tvm
from onnx import helper

import reforge
from reforge import ReforgeError
from reforge.backends import KINDS, ArmBackend, CudaBackend, OpenCLFPGABackend, X86Backend, kinds_defaulting_to
from reforge.passes import PASSES, get, select

TABLE = ["remove-noops", "fold-masks", "fold-constants", "fold-batchnorm", "fold-channel-tile", "complex-conv",
         "merge-branches", "fuse-fplus", "remove-residual", "prune-channels", "drop-padding-taps", "fwht", "binarize",
         "fft-conv", "sparse", "dead-code"]  # binarize before fft-conv and sparse: a ±1 conv is bit-serial, never FFT
O1 = ["remove-noops", "fold-masks", "fold-constants", "fold-batchnorm", "dead-code"]  # the -O2 passes start at -O2
O2 = [n for n in TABLE if n != "remove-residual"]  # remove-residual: opencl-fpga
O2_ARM = [n for n in O2 if n != "fft-conv"]  # fft-conv: its cost model is measured on x86 CPUs
O2_CUDA = [n for n in O2_ARM if n not in ("prune-channels", "sparse")]  # prune-channels, sparse: x86 and arm
O2_FPGA = [n for n in TABLE if n not in ("fft-conv", "prune-channels", "sparse")]
REWRITES = ("fold-batchnorm", "fold-channel-tile", "complex-conv", "merge-branches", "remove-residual",  # need
            "prune-channels", "binarize")  # fold-batchnorm
O2_ONLY = ["fold-channel-tile", "complex-conv", "merge-branches", "drop-padding-taps", "fuse-fplus", "prune-channels",
           "fwht", "fft-conv", "sparse", "binarize"]


def test_table_order_and_prerequisites():
    assert list(PASSES) == TABLE
    assert PASSES["fold-batchnorm"].requires == ("fold-constants",)
    for name in REWRITES[1:]:
        assert PASSES[name].requires == ("fold-constants", "fold-batchnorm")
    for name in ("fuse-fplus", "fwht", "fft-conv", "sparse"):
        assert PASSES[name].requires == ("fold-constants",)
    assert all(not PASSES[n].requires for n in TABLE
               if n not in (*REWRITES, "fuse-fplus", "fwht", "fft-conv", "sparse"))
    assert PASSES["fft-conv"].level == 2 and PASSES["fft-conv"].per_target
    assert kinds_defaulting_to("fft-conv") == ["x86"]


def test_backends_name_exactly_the_per_target_passes():
    """Every per-target pass is some backend's default, and a backend's defaults are per-target passes."""
    named = set().union(*(cls.default_passes for cls in KINDS.values()))
    assert named == {n for n, p in PASSES.items() if p.per_target} == {"remove-residual", "prune-channels",
                                                                          "fft-conv", "sparse"}
    assert kinds_defaulting_to("prune-channels") == ["arm", "x86"] and kinds_defaulting_to("fwht") == []
    assert kinds_defaulting_to("sparse") == ["arm", "x86"]


@pytest.mark.parametrize("name", TABLE)
def test_every_pass_is_a_tvm_pass_with_a_fresh_report(name):
    a, b = get(name).make(), get(name).make()
    assert isinstance(a, tvm.transform.Pass)
    assert a.report.total == 0 and a.report is not b.report


@pytest.mark.parametrize("kwargs,expected", [
    (dict(opt_level=0), []),
    (dict(opt_level=1), O1),
    (dict(opt_level=2), O2),
    (dict(), O2),  # the default level is -O2
    (dict(opt_level=2, disable=["dead-code"]), O2[:-1]),
    (dict(opt_level=2, disable=O2_ONLY), O1),
    (dict(opt_level=2, disable=["fold-batchnorm", "fold-channel-tile", "complex-conv", "merge-branches", "binarize",
                                "prune-channels"]),
     ["remove-noops", "fold-masks", "fold-constants", "fuse-fplus", "drop-padding-taps", "fwht", "fft-conv", "sparse",
      "dead-code"]),
    (dict(opt_level=2, disable=["fold-batchnorm", "fold-constants", *O2_ONLY]),
     ["remove-noops", "fold-masks", "dead-code"]),
    (dict(opt_level=1, enable=["merge-branches"]), ["remove-noops", "fold-masks", "fold-constants", "fold-batchnorm",
                                                    "merge-branches", "dead-code"]),
    (dict(opt_level=1, enable=["fwht"]), ["remove-noops", "fold-masks", "fold-constants", "fold-batchnorm", "fwht",
                                          "dead-code"]),
    (dict(opt_level=2, enable=["remove-residual"]), TABLE),
    (dict(opt_level=2, enable=["sparse"]), [n for n in TABLE if n != "remove-residual"]),
    (dict(opt_level=0, enable=["remove-residual"]), ["fold-constants", "fold-batchnorm", "remove-residual"]),
    (dict(opt_level=2, disable=["fft-conv"]), [n for n in O2 if n != "fft-conv"]),
    (dict(opt_level=1, enable=["fft-conv"]), ["remove-noops", "fold-masks", "fold-constants", "fold-batchnorm",
                                              "fft-conv", "dead-code"]),
    (dict(opt_level=0, enable=["fft-conv"]), ["fold-constants", "fft-conv"]),
    (dict(opt_level=0, enable=["dead-code"]), ["dead-code"]),
    (dict(opt_level=0, enable=["fold-batchnorm"]), ["fold-constants", "fold-batchnorm"]),
    (dict(opt_level=0, enable=["dead-code", "remove-noops"]), ["remove-noops", "dead-code"]),  # table order
    (dict(passes=[]), []),
    (dict(passes=["fold-batchnorm"]), ["fold-constants", "fold-batchnorm"]),
    (dict(passes=["dead-code", "remove-noops"]), ["remove-noops", "dead-code"]),
    (dict(opt_level=0, passes=["remove-noops"]), ["remove-noops"]),  # an explicit list replaces -O defaults
    (dict(passes=["remove-noops"], enable=["fold-batchnorm"]), ["remove-noops", "fold-constants", "fold-batchnorm"]),
    (dict(passes=["remove-noops", "dead-code"], disable=["dead-code"]), ["remove-noops"]),
    (dict(opt_level=2, target_passes=ArmBackend.default_passes), O2_ARM),
    (dict(opt_level=2, target_passes=CudaBackend.default_passes), O2_CUDA),
    (dict(opt_level=2, target_passes=OpenCLFPGABackend.default_passes), O2_FPGA),  # remove-residual: FPGA only
    (dict(opt_level=1, target_passes=OpenCLFPGABackend.default_passes), O1),
    (dict(opt_level=2, target_passes=frozenset()), O2_CUDA),  # no per-target pass
])
def test_select(kwargs, expected):
    """x86's per-target defaults unless a case names others."""
    assert select(**{"target_passes": X86Backend.default_passes, **kwargs}) == expected


@pytest.mark.parametrize("kwargs", [
    dict(opt_level=2, disable=["fold-constants"]),
    dict(opt_level=0, enable=["fold-batchnorm"], disable=["fold-constants"]),
    dict(passes=["fold-batchnorm"], disable=["fold-constants"]),
])
def test_disabling_a_prerequisite_names_both(kwargs):
    with pytest.raises(ReforgeError, match=r"(?s)(?=.*'fold-constants')(?=.*'fold-batchnorm')"):
        select(**kwargs)


def test_disabling_fold_batchnorm_at_O2_names_its_users():
    with pytest.raises(ReforgeError, match=r"(?s)(?=.*'fold-batchnorm')(?=.*'merge-branches')(?=.*'binarize')"):
        select(opt_level=2, disable=["fold-batchnorm"])


@pytest.mark.parametrize("kwargs", [
    dict(enable=["fold-bn"]), dict(disable=["fold-bn"]), dict(passes=["remove-noops", "fold-bn"]),
    dict(target_passes=["fold-bn"]),
])
def test_unknown_pass_name(kwargs):
    with pytest.raises(ReforgeError, match="unknown pass 'fold-bn'"):
        select(**kwargs)
    with pytest.raises(ReforgeError, match="unknown pass 'fold-bn'"):
        get("fold-bn")


@pytest.mark.parametrize("level", [-1, 3, 10])
def test_unknown_opt_level(level):
    with pytest.raises(ReforgeError, match=re.escape(f"-O{level}")):
        select(opt_level=level)


def test_compile_runs_the_selection(harness):
    """reforge.compile runs exactly select()'s passes, in that order (the manifest records them)."""
    model = harness.model([helper.make_node("Relu", ["x"], ["y"])], {"x": (1, 3)}, {})
    assert reforge.compile(model, opt_level=0).manifest["passes"] == []
    names = [p["name"] for p in reforge.compile(model, passes=["fold-batchnorm"]).manifest["passes"]]
    assert names == ["fold-constants", "fold-batchnorm"]
    with pytest.raises(ReforgeError, match="'fold-constants'"):
        reforge.compile(model, disable_passes=["fold-constants"])
