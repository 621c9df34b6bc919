"""The tuning progress display, and the wall-clock budget, as a MetaSchedule measure callback."""

from __future__ import annotations

import time
from typing import Callable

from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms


@derived_object
class Progress(ms.measure_callback.PyMeasureCallback):
    """After every measured batch: ``checkpoint()`` (the records file is rewritten, so a killed
    run loses at most one batch), then trials done, the task's best latency, time used and left.
    Past ``timeout`` seconds it sets ``timed_out``, which ``Budgeted`` search strategies obey."""

    def __init__(self, total_trials: int, timeout: float | None, say: Callable[[str], None],
                 checkpoint: Callable[[], None]):
        self.total, self.timeout, self.say, self.checkpoint = total_trials, timeout, say, checkpoint
        self.start = time.perf_counter()
        self.done = 0
        self.best: dict[int, float] = {}
        self.timed_out = False

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        if not runner_results:
            return
        self.done += len(runner_results)
        self.checkpoint()
        secs = [sum(r.run_secs) / len(r.run_secs) for r in runner_results if r.run_secs and not r.error_msg]
        secs = [float(s) for s in secs]
        if secs:
            self.best[task_id] = min(secs + ([self.best[task_id]] if task_id in self.best else []))
        elapsed = time.perf_counter() - self.start
        left = elapsed / self.done * max(self.total - self.done, 0) if self.done else 0.0
        if self.timeout is not None:
            left = min(left, max(self.timeout - elapsed, 0.0))
        name = task_scheduler.tasks_[task_id].ctx.task_name
        best = f"{self.best[task_id] * 1e3:.3f} ms" if task_id in self.best else "no valid candidate yet"
        self.say(f"[{self.done}/{self.total} trials] task {task_id + 1}/{len(task_scheduler.tasks_)} {name}: "
                 f"best {best}; {elapsed:.0f} s used, ~{left:.0f} s left")
        if self.timeout is not None and elapsed > self.timeout and not self.timed_out:
            self.timed_out = True
            self.say(f"time budget of {self.timeout:.0f} s spent: stopping")


@derived_object
class Budgeted(ms.search_strategy.PySearchStrategy):
    """``inner``'s candidates until ``progress.timed_out``, then none: a finished search, which the
    task scheduler terminates itself (TVM's scheduler terminates tasks without checking whether a
    measure callback already did, so the budget must not terminate them: `!task->is_terminated`)."""

    def __init__(self, inner: ms.search_strategy.SearchStrategy, progress: Progress):
        self.inner, self.progress = inner, progress

    def _initialize_with_tune_context(self, context) -> None:
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None) -> None:
        self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self):
        return None if self.progress.timed_out else self.inner.generate_measure_candidates()

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self) -> ms.search_strategy.SearchStrategy:
        return Budgeted(self.inner.clone(), self.progress)
