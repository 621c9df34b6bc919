"""Differential fuzzing of every pass: random CNN graphs (tests/fuzz/graphs.py) compiled at -O0,
at -O2 (with and without the on-request passes) and with each pass alone, against onnxruntime
(tolerance in tests/fuzz/differential.py).

The budget is ``REFORGE_FUZZ_EXAMPLES`` graphs (CI: the default below, with a fixed seed so a
red run reproduces); ``make fuzz N=1000`` runs more with fresh randomness and prints the
statistics (graphs, modules built, rewrites / runs per pass, CPU seconds per graph).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .differential import STATS, check, configurations, summary
from .graphs import cnn_models

EXAMPLES = int(os.environ.get("REFORGE_FUZZ_EXAMPLES", "40"))
FRESH = os.environ.get("REFORGE_FUZZ_FRESH") == "1"
PROGRESS = 25  # `make fuzz` (pytest -s) prints the report line every PROGRESS graphs


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not FRESH, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(drawn=cnn_models(), seed=st.integers(0, 1000))
def test_reforge_agrees_with_onnxruntime(drawn, seed):
    model, _layers = drawn
    check(model, configurations(), seed)
    if FRESH and STATS["graphs"] % PROGRESS == 0:
        print(summary(), flush=True)
