"""The pass tests' fixture: one ``Harness`` (tests/helpers.py) per session: build a small ONNX graph, import
it, run passes on the Relax module, build it for the host, and run the original graph under onnxruntime."""

from __future__ import annotations

import pytest

from tests.helpers import Harness


@pytest.fixture(scope="session")
def harness() -> Harness:
    return Harness()
