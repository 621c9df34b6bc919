"""reforge tune: MetaSchedule search (XGBoost cost model) over the fused functions of a model.

The model is imported, rewritten and fused exactly as ``compile`` does, so the records match the
functions ``compile --tuning-records`` will meet: for CPU targets reforge's blocked-layout functions,
searched in reforge's design spaces (``space``); for ``cuda`` the NCHW functions of the GPU path, in
MetaSchedule's CUDA space (multi-level tiling bound to blocks and threads, shared-memory staging),
built with nvcc here and measured on a GPU here or on the tracker's GPU devices. Each task starts
from a record of its default schedule, measured here: the tuned result is never slower than the
untuned one. Where fft-conv runs, each conv it may rewrite and whose cost-model estimates are close
is first timed direct and as FFT (``fft_choice``), and where sparse runs, each layer with enough
zeros dense and sparse (``sparse_choice``); the records keep the faster, which ``compile`` then follows.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from reforge import backends
from reforge.backends import Backend
from reforge.errors import ReforgeError, one_line
from reforge.passes.fft_conv import eligible_convs
from reforge.passes.sparse import eligible_layers
from reforge.topi_ext.fast_math import without_lets_module

from . import fft_choice, sparse_choice
from .progress import Budgeted, Progress
from .records import TuningRecords

TRIALS_PER_ITER = 16
_TASK_LOG = logging.getLogger("reforge.autotune.task")  # progress is reforge's own display
_TASK_LOG.addHandler(logging.NullHandler())
_TASK_LOG.propagate = False
MIN_SHARE = 0.02  # tasks below this share of the default latency are not searched
SETTLE_TOP, SETTLE_ROUNDS = 3, 3  # candidates per task re-measured at the end (with the default), rounds


@dataclass
class TaskResult:
    name: str
    weight: int
    default_ms: float | None
    best_ms: float | None


@dataclass
class TuneResult:
    tasks: list[TaskResult] = field(default_factory=list)
    trials: int = 0
    seconds: float = 0.0
    records: int = 0
    timed_out: bool = False

    def total_ms(self, attr: str) -> float:
        return sum(t.weight * (getattr(t, attr) or 0.0) for t in self.tasks)


def tune(model, target="x86", *, trials: int, output: str, prior: str | None = None,
         timeout: float | None = None, remote=None, opt_level: int = 2, passes=None, enable_passes=(),
         disable_passes=(), input_shapes=None, log: Callable[[str], None] = print) -> TuneResult:
    """Tune ``model`` for ``trials`` measured candidates (or ``timeout`` seconds); write ``output``.

    With ``remote`` (:class:`reforge.remote.RemoteDevices`) every measurement, the defaults' too,
    runs on the tracker's devices, as many at once as are registered.
    """
    from reforge.pipeline import rewrite_and_fuse  # which imports this package's records

    if trials < 1:
        raise ReforgeError("--trials must be at least 1")
    tgt = backends.get(target)
    if not tgt.tunable:
        kinds = backends.tunable_kinds()
        raise ReforgeError(f"reforge tune supports the targets of kind {', '.join(kinds[:-1])} and {kinds[-1]}; "
                           f"target '{tgt.name}' compiles with its default schedules")
    if remote is None and not tgt.can_measure():
        raise ReforgeError(f"tuning for '{tgt.name}' measures on its devices: give --rpc-tracker and --rpc-key "
                           f"({tgt.measure_hint()})")
    names = tgt.passes(opt_level, enable_passes, disable_passes, passes)
    records = TuningRecords.load(prior, tgt.describe()) if prior else TuningRecords(tgt.describe())
    try:
        measure = tgt.timer(remote)
        choosers = {"fft-conv": _choose_fft_by_measurement, "sparse": _choose_sparse_by_measurement}

        def before_pass(name: str, mod: tvm.IRModule) -> None:
            """Measure the choices of a pass that follows measurements, before it runs."""
            if name in choosers:
                choosers[name](mod, tgt, records, measure, log)
                records.save(output)

        front = rewrite_and_fuse(model, tgt, names, input_shapes=input_shapes, before_pass=before_pass,
                                 pass_options=lambda name: records.pass_options().get(name, {}))
        imported = front.imported
        extracted = extract_tasks(front.fused, tgt)
        log(f"{len(extracted)} tasks in {imported.name}; {trials} trials"
            + (f", at most {timeout:.0f} s" if timeout else ""))
        database = records.database()
        defaults = [_commit_default(database, task, tgt, measure) for task in extracted]
        measure = None  # releases its device session: the search measures on every device
        records.save(output)  # from here on the file always holds a usable set of records
        total = sum(t.weight * (d or 0.0) for t, d in zip(extracted, defaults))
        worth = [t for t, d in zip(extracted, defaults) if d is None or t.weight * d >= MIN_SHARE * total]
        log(f"searching {len(worth)} of {len(extracted)} tasks (the others take under "
            f"{MIN_SHARE:.0%} of the time each and keep their default schedule)")
        result = _search(worth, database, tgt, trials, timeout, remote.runner() if remote else "local", log,
                         checkpoint=lambda: records.save(output))
        log(f"settling: each searched task's {SETTLE_TOP} best candidates and its default schedule, "
            f"re-measured in {SETTLE_ROUNDS} interleaved rounds")
        measure = tgt.timer(remote)  # a device alive now
        settled: dict[str, float] = {}  # the default schedule's latency (ms) where settling re-measured it
        for task in worth:
            try:
                default_ms = _settle(task, database, records, tgt, measure)
            except (RuntimeError, OSError) as err:  # a device lost: the ranking of the search stays
                log(f"{task.task_name}: not settled ({one_line(err)})")
                continue
            if default_ms is not None:
                settled[task.task_name] = default_ms
        database = records.database()
        for task, default_ms in zip(extracted, defaults):
            best = _best_ms(database, task)
            result.tasks.append(TaskResult(task.task_name, int(task.weight), settled.get(task.task_name, default_ms),
                                           best))
        records.save(output)
        result.records = records.count()
        return result
    finally:
        records.close()


def extract_tasks(fused: tvm.IRModule, tgt: Backend) -> list[ms.ExtractedTask]:
    """The tuning tasks of a module fused for ``tgt`` (``Backend.fuse``): the functions ``compile`` schedules, in the
    form their records are keyed by (``fast_math.without_lets``; ``Backend.tuned`` looks them up alike)."""
    return ms.relax_integration.extract_tasks(without_lets_module(fused), tgt.tvm_target)


def _search(extracted, database, tgt, trials, timeout, runner, log, checkpoint) -> TuneResult:
    cores = len(os.sched_getaffinity(0))  # this machine's cores build and search
    progress = Progress(trials, timeout, log, checkpoint)
    start = time.perf_counter()
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)  # reforge prints its own progress
    tgt.load_intrinsics()  # before TuneContext, which would import every target's
    with tempfile.TemporaryDirectory(prefix="reforge-tune-") as work:
        contexts = [ms.TuneContext(mod=task.dispatched[0], target=tgt.tvm_target,
                                   space_generator=tgt.tuning_space(task.dispatched[0]),
                                   search_strategy=Budgeted(ms.search_strategy.EvolutionarySearch(
                                       population_size=128, init_min_unmeasured=32), progress),
                                   task_name=task.task_name, logger=_TASK_LOG, num_threads=cores,
                                   rand_state=seed).clone()
                    for seed, task in enumerate(extracted)]
        ms.tune_tasks(tasks=contexts, task_weights=[t.weight for t in extracted], work_dir=work,
                      max_trials_global=trials, num_trials_per_iter=TRIALS_PER_ITER,
                      builder=tgt.tuning_builder(cores), runner=runner, database=database,
                      cost_model="xgb", measure_callbacks=ms.measure_callback.MeasureCallback.create("default")
                      + [progress])
    return TuneResult(trials=progress.done, seconds=time.perf_counter() - start, timed_out=progress.timed_out)


def _choose_fft_by_measurement(mod, tgt, records: TuningRecords, measure, log) -> None:
    """Measure, direct and as FFT, each conv fft-conv may rewrite that no record has decided yet."""
    _choose_by_measurement("fft-conv", "conv", [(g.key, g) for g in eligible_convs(mod)],
                           lambda g: fft_choice.measure(g, tgt, measure),
                           lambda found: "direct" if found["fft_size"] is None else f"FFT L={found['fft_size']}",
                           records, log)


def _choose_sparse_by_measurement(mod, tgt, records: TuningRecords, measure, log) -> None:
    """Measure, dense and sparse, each layer the sparse pass may rewrite that no record has decided yet."""
    _choose_by_measurement("sparse", "layer", [(layer.key, layer) for layer in eligible_layers(mod)],
                           lambda layer: sparse_choice.measure(layer, tgt, measure),
                           lambda found: "sparse" if found["sparse"] else "dense", records, log)


def _choose_by_measurement(name: str, field: str, items, measure_one, pick, records: TuningRecords, log) -> None:
    """Record pass ``name``'s measured choice (``measure_one(item)``, None: not measured) for each
    ``(key, item)`` no record has decided yet, as ``{"pass": name, field: key, **found}``."""
    for key, item in items:
        if key in records.choices:
            continue
        found = measure_one(item)
        if found is not None:
            records.choices[key] = {"pass": name, field: key, **found}
            times = ", ".join(f"{way} {ms:.3f} ms" for way, ms in found["ms"].items())
            log(f"{name}, measured: {field} {key}: {times} -> {pick(found)}")


def _commit_default(database, task, tgt, measure) -> float | None:
    """Measure the task's default schedule and store it as a record; its latency in ms."""
    func = task.dispatched[0]["main"]
    sch = tgt.default_schedule(func)
    if sch is None:
        return None
    secs = measure(tvm.compile(sch.mod, target=tgt.tvm_target), _random_args(func))
    workload = database.commit_workload(task.dispatched[0])
    database.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, workload, run_secs=[secs], target=tgt.tvm_target,
        args_info=ms.arg_info.ArgInfo.from_prim_func(func)))
    return secs * 1e3


def _settle(task, database, records: TuningRecords, tgt, measure) -> float | None:
    """Re-measure the task's SETTLE_TOP best records and its default schedule in interleaved rounds and
    rank them by those medians: a candidate that only looked fast (measured while the machine was
    busy, or in one lucky run) cannot win, and a tuned build is not slower than the default one.
    Returns the default schedule's re-measured latency in ms (None if it was not re-measured)."""
    mod = task.dispatched[0]
    func = mod["main"]
    traces: dict = {}
    # each run commits its default again: look past repeated traces
    for record in database.get_top_k(database.commit_workload(mod), 16 * SETTLE_TOP):
        if len(traces) < SETTLE_TOP:
            traces.setdefault(str(record.trace), record.trace)
    default = tgt.default_schedule(func)
    if default is not None:
        traces.setdefault(str(default.trace), default.trace)
    if not traces:
        return None
    libs = {}  # one trace too: a record of the default's trace may claim what the default did not measure
    for key, trace in traces.items():
        sch = s_tir.Schedule(func)
        trace.apply_to_schedule(sch, remove_postproc=False)
        libs[key] = tvm.compile(sch.mod, target=tgt.tvm_target)
    arrays = _random_args(func)
    secs: dict[str, list[float]] = {key: [] for key in libs}
    for _ in range(SETTLE_ROUNDS):
        for key, lib in libs.items():
            secs[key].append(measure(lib, arrays))
    medians = {key: float(np.median(s)) for key, s in secs.items()}
    records.settle(mod, medians)
    return None if default is None else medians[str(default.trace)] * 1e3


def _random_args(func) -> list[np.ndarray]:
    return [np.random.default_rng(0).standard_normal([int(d) for d in p.shape]).astype(str(p.dtype))
            for p in func.params]


def _best_ms(database, task) -> float | None:
    if not database.has_workload(task.dispatched[0]):
        return None
    top = database.get_top_k(database.commit_workload(task.dispatched[0]), 1)
    return float(np.mean([float(s) for s in top[0].run_secs])) * 1e3 if top else None
