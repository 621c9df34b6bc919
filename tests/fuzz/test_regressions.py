"""Graphs kept for every run, under every configuration of differential.py, against onnxruntime:
``regressions/`` holds every graph the fuzzer failed on (after the fix: ``where-after-blocked-conv``, a
``Where(conv(x) >= 0, 1, -1)`` whose bool tensor the x86 build could not move out of NCHW8c), ``corpus/``
fuzzer-drawn graphs that exercise the rewrites most (branch sums, residual blocks, concat)."""

from __future__ import annotations

import glob
import os

import onnx
import pytest

from .differential import REGRESSIONS, check, configurations

HERE = os.path.dirname(__file__)
CASES = sorted(glob.glob(os.path.join(REGRESSIONS, "*.onnx")) + glob.glob(os.path.join(HERE, "corpus", "*.onnx")))


@pytest.mark.parametrize("path", CASES, ids=[os.path.relpath(p, HERE) for p in CASES])
def test_kept_graph(path):
    check(onnx.load(path), configurations())
