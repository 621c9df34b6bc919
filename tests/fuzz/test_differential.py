"""Differential fuzzing of every pass: random CNN graphs (tests/fuzz/graphs.py) compiled at -O0,
at -O2 (with and without the on-request passes) and with each pass alone, against onnxruntime
(tolerance in tests/fuzz/differential.py).

The budget is ``REFORGE_FUZZ_EXAMPLES`` graphs split over ``REFORGE_FUZZ_SHARDS`` tests that pytest
workers run in parallel (CI: the defaults below, each shard with a fixed seed so a red run
reproduces); ``make fuzz N=1000`` runs more with fresh randomness and prints the statistics
(graphs, modules built, rewrites / runs per pass, CPU seconds per graph) summed over the workers.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from .differential import STATS, check, configurations, summary
from .graphs import cnn_models

EXAMPLES = int(os.environ.get("REFORGE_FUZZ_EXAMPLES", "40"))
SHARDS = int(os.environ.get("REFORGE_FUZZ_SHARDS", "2"))  # independent streams of graphs, one test each
FRESH = os.environ.get("REFORGE_FUZZ_FRESH") == "1"
PROGRESS = 25  # `make fuzz` without workers (pytest -s) prints the report line every PROGRESS graphs
CI_SEED = 20261201  # shard i draws from CI_SEED + i unless fresh


def shard_test(shard: int):
    """The differential test over shard ``shard``'s share of EXAMPLES graphs."""
    @settings(max_examples=EXAMPLES // SHARDS + (shard < EXAMPLES % SHARDS), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(drawn=cnn_models(), input_seed=st.integers(0, 1000))
    def run(drawn, input_seed):
        model, _layers = drawn
        check(model, configurations(), input_seed)
        if FRESH and STATS["graphs"] % PROGRESS == 0:
            print(summary(), flush=True)
    return run if FRESH else seed(CI_SEED + shard)(run)


@pytest.mark.parametrize("shard", range(0, SHARDS, 2))  # the odd ones: test_differential_odd.py, another worker
def test_reforge_agrees_with_onnxruntime(shard):
    shard_test(shard)()
