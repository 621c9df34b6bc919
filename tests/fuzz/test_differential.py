"""Differential fuzzing of every pass: random CNN graphs (tests/fuzz/graphs.py) compiled at -O0,
at -O2 and with one pass alone, against onnxruntime (tolerance in tests/fuzz/differential.py).

The budget is ``REFORGE_FUZZ_EXAMPLES`` graphs (CI: the default below, with a fixed seed so a
red run reproduces); ``make fuzz N=1000`` runs more with fresh randomness and prints the
statistics.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reforge.passes.registry import PASSES

from .differential import check, configurations
from .graphs import cnn_models

EXAMPLES = int(os.environ.get("REFORGE_FUZZ_EXAMPLES", "60"))
FRESH = os.environ.get("REFORGE_FUZZ_FRESH") == "1"


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not FRESH, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(drawn=cnn_models(), single=st.sampled_from(sorted(PASSES)), seed=st.integers(0, 1000))
def test_reforge_agrees_with_onnxruntime(drawn, single, seed):
    model, _layers = drawn
    check(model, configurations(single), seed)
