"""One differential check: a model compiled by reforge under every configuration against onnxruntime
on the same random input. Tolerance: ``max|out - ref| <= RTOL * max|ref|`` (float32).

A graph is imported once and run under onnxruntime once. Configurations share pass prefixes (every
one starts with fold-constants), so each distinct prefix runs once; a configuration whose rewritten
module is structurally equal to one already built and checked (a pass that left the graph alone) is
not built again: its output is that module's.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import numpy as np
import onnx
import tvm
import tvm_ffi
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from reforge import backends, frontend
from reforge.build import build
from reforge.execution import Runner
from reforge.passes import registry

from .graphs import cnn_models

RTOL = 1e-4
REGRESSIONS = os.path.join(os.path.dirname(__file__), "regressions")
GOAL = 100  # rewrites per pass that a `make fuzz` run aims at
STATS = {"graphs": 0, "configs": 0, "built": 0, "failures": 0, "cpu_s": 0.0,
         "rewrites": Counter(), "runs": Counter()}


def configurations() -> list[tuple[str, dict]]:
    """-O0, -O2, -O2 with the on-request passes too, and every pass alone with its prerequisites."""
    extra = sorted(set(registry.PASSES) - set(backends.get("x86").passes(2)))
    return ([("-O0", {"opt_level": 0}), ("-O2", {"opt_level": 2}),
             ("-O2+" + "+".join(extra), {"opt_level": 2, "enable": extra})]
            + [(name, {"passes": [name]}) for name in sorted(registry.PASSES)])


def check(model: onnx.ModelProto, configs: list[tuple[str, dict]], seed: int = 0) -> None:
    """Compile and run ``model`` under every configuration; on a mismatch or a crash, save the model
    as ``regressions/last-failure.onnx`` (hypothesis replays its minimal example last) and fail."""
    start = time.process_time()
    try:
        _check(model, configs, seed)
    except Exception:  # a mismatch, or a crash in a pass or the build
        STATS["failures"] += 1
        os.makedirs(REGRESSIONS, exist_ok=True)
        onnx.save(model, os.path.join(REGRESSIONS, "last-failure.onnx"))
        raise
    finally:
        STATS["cpu_s"] += time.process_time() - start


def _check(model: onnx.ModelProto, configs: list[tuple[str, dict]], seed: int) -> None:
    imported = frontend.load(model)
    feeds = imported.random_inputs(seed)
    arrays = [feeds[s.name] for s in imported.inputs]
    ref = imported.reference(feeds)[0]
    host = backends.get("x86")
    STATS["graphs"] += 1
    prefixes: dict[tuple[str, ...], tvm.IRModule] = {(): imported.mod}
    built: list[tuple[tvm.IRModule, np.ndarray]] = []
    by_hash: dict[int, list[int]] = {}
    for label, options in configs:
        names = host.passes(options.get("opt_level", 2), options.get("enable", ()), (), options.get("passes"))
        mod = _rewrite(prefixes, tuple(names))
        STATS["configs"] += 1
        key = tvm_ffi.structural_hash(mod)
        same = [i for i in by_hash.get(key, []) if tvm_ffi.structural_equal(built[i][0], mod)]
        if same:
            out = built[same[0]][1]
        else:
            out = Runner(build(mod, host)[0]).run(arrays)[0]
            by_hash.setdefault(key, []).append(len(built))
            built.append((mod, out))
            STATS["built"] += 1
        scale = max(float(np.abs(ref).max()), 1e-6)
        err = float(np.abs(out - ref).max()) / scale if out.shape == ref.shape else float("inf")
        if not err <= RTOL:
            raise AssertionError(f"{label}: relative error {err:.3g} > {RTOL} (model saved to "
                                 f"tests/fuzz/regressions/last-failure.onnx; rename it to keep it)")


def _rewrite(prefixes: dict[tuple[str, ...], tvm.IRModule], names: tuple[str, ...]) -> tvm.IRModule:
    """The imported module after ``names``, each distinct prefix run (and counted) once."""
    for i in range(1, len(names) + 1):
        if names[:i] not in prefixes:
            pass_ = registry.get(names[i - 1]).make()
            prefixes[names[:i]] = pass_(prefixes[names[:i - 1]])
            STATS["runs"][names[i - 1]] += 1
            STATS["rewrites"][names[i - 1]] += pass_.report.total
    return prefixes[names]


def merge_stats(other: dict) -> None:
    """Add another process's STATS (as JSON) into this one's."""
    for key, value in other.items():
        if isinstance(value, dict):
            STATS[key].update(value)
        else:
            STATS[key] += value


def summary() -> str:
    """The greppable report line of a run."""
    per_pass = ", ".join(f"{name} {STATS['rewrites'][name]}/{STATS['runs'][name]}" for name in sorted(registry.PASSES))
    short = sorted(name for name in registry.PASSES if STATS["rewrites"][name] < GOAL)
    goal = f"every pass >= {GOAL} rewrites" if not short else f"below {GOAL} rewrites: {', '.join(short)}"
    per_graph = STATS["cpu_s"] / max(STATS["graphs"], 1)
    return (f"fuzz: {STATS['graphs']} graphs, {STATS['configs']} configurations, {STATS['built']} modules built "
            f"and checked, {STATS['failures']} mismatches, {per_graph:.2f} CPU s/graph; rewrites/runs per pass: "
            f"{per_pass}; {goal}")


# ----------------------------------------------------------------------------- the test's shards


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
