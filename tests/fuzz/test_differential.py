"""Differential fuzzing of every pass: random CNN graphs (tests/fuzz/graphs.py) compiled at -O0,
at -O2 (with and without the on-request passes) and with each pass alone, against onnxruntime
(tolerance in tests/fuzz/differential.py).

The budget is ``REFORGE_FUZZ_EXAMPLES`` graphs split over ``REFORGE_FUZZ_SHARDS`` tests that pytest
workers run in parallel (CI: the defaults in differential.py, each shard with a fixed seed so a red run
reproduces); ``make fuzz N=1000`` runs more with fresh randomness and prints the statistics
(graphs, modules built, rewrites / runs per pass, CPU seconds per graph) summed over the workers.
"""

from __future__ import annotations

import pytest

from .differential import SHARDS, shard_test


@pytest.mark.parametrize("shard", range(0, SHARDS, 2))  # the odd ones: test_differential_odd.py, another worker
def test_reforge_agrees_with_onnxruntime(shard):
    shard_test(shard)()
