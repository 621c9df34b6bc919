"""Running a Relax executable on numpy inputs, checked against its signature."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from reforge.frontend.tensor_spec import TensorSpec

from . import tvm_runtime
from .batching import BatchSpec
from .errors import ReforgeError
from .profiling import Profile, profile_calls
from .threads import check as check_threads, running


def check_inputs(specs: list[TensorSpec], inputs, batch: BatchSpec | None = None) -> list[np.ndarray]:
    """Order ``inputs`` (a dict by name, a list, or one array) as ``specs``, refusing mismatches.
    With ``batch``, ``specs`` hold batch 1's shapes and axis 0 may be any batch the buckets run."""
    names = [s.name for s in specs]
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    if isinstance(inputs, (list, tuple)):
        if len(inputs) != len(specs):
            raise ReforgeError(f"the module takes {len(specs)} inputs ({', '.join(names)}); got {len(inputs)}")
        inputs = dict(zip(names, inputs))
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise ReforgeError(f"unknown input '{unknown[0]}'; the module's inputs are: {', '.join(names)}")
    arrays = []
    for spec in specs:
        if spec.name not in inputs:
            raise ReforgeError(f"missing input '{spec.name}' ({spec.dtype}{list(spec.shape)})")
        a = np.asarray(inputs[spec.name])
        if batch is not None and a.ndim == len(spec.shape) and a.shape[1:] == spec.shape[1:]:
            pass  # its batch is checked below, with the other inputs'
        elif tuple(a.shape) != spec.shape:
            compiled = f"[N, {', '.join(map(str, spec.shape[1:]))}] for N from 1 to {batch.max_batch}" if batch \
                else str(list(spec.shape))
            raise ReforgeError(f"input '{spec.name}' has shape {list(a.shape)}; the module was compiled for {compiled}")
        if a.dtype.name != spec.dtype:
            raise ReforgeError(f"input '{spec.name}' has dtype {a.dtype.name}; the module expects {spec.dtype}")
        arrays.append(np.ascontiguousarray(a))
    if batch is not None:
        batch.batch_of(names, arrays)
    return arrays


def _flatten(value) -> list[np.ndarray]:
    if isinstance(value, tvm_runtime.ffi().Tensor):
        return [tvm_runtime.to_numpy(value)]
    return [a for v in value for a in _flatten(v)]


class Runner:
    """Relax VMs over one executable (in memory, loaded from a .so, or on an RPC ``session``): one VM
    per calling thread, since a VM holds the registers of the call it runs; all of them share the
    executable's constants, so the weights are held once however many threads call.

    ``threads``: TVM pool workers a call uses when it is the only one in progress (default
    :func:`reforge.threads.default_threads`); calls that overlap others run on one thread each.
    ``batch``: the executable's batch buckets (:mod:`reforge.batching`); a batch of n then runs as
    bucket calls whose outputs are concatenated on axis 0."""

    emulated = False  # runs on the target's own CPU / GPU

    def __init__(self, executable, device=None, session=None, threads: int | None = None,
                 batch: BatchSpec | None = None):
        self.module = executable.jit() if hasattr(executable, "jit") else executable  # an in-memory build
        self.device = device if device is not None else tvm_runtime.cpu()
        self.session = session  # keeps a remote device's session open
        self.threads = None if threads is None else check_threads(threads)
        self.batch = batch
        self._local = threading.local()
        self._remote = threading.Lock()  # one call at a time through an RPC session

    @property
    def vm(self):
        """The calling thread's VM (made on its first call)."""
        return self._state().vm

    def _state(self) -> _ThreadState:
        state = getattr(self._local, "state", None)
        if state is None:
            vm = tvm_runtime.new_vm(self.module, self.device)
            state = self._local.state = _ThreadState(vm, {"main": vm["main"]})
        return state

    def _call(self):
        """Around one call: the RPC session held, or this thread's share of the local cores."""
        return self._remote if self.session is not None else running(self.threads)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        with self._call():
            calls = self._calls(self._state(), arrays)
            if len(calls) == 1:
                return _flatten(calls[0][1](*calls[0][2]))
            parts = [_flatten(fn(*args)) for _name, fn, args in calls]
            return [np.concatenate(outs) for outs in zip(*parts)]

    def _calls(self, state: _ThreadState, arrays: list[np.ndarray]) -> list[tuple[str, object, list]]:
        """(function name, function, its inputs on the device) of each call that runs ``arrays``: ``main``
        alone, or one per bucket of the batch split (rows of axis 0 in order)."""
        plan = None if self.batch is None else self.batch.plans[arrays[0].shape[0]]
        if plan is None or len(plan) == 1:
            name = "main" if plan is None else plan[0][0]
            return [(name, state.function(name), self._on_device(state, arrays))]
        return [(name, state.function(name), self._on_device(state, [a[start:start + size] for a in arrays]))
                for name, start, size in plan]

    def _on_device(self, state: _ThreadState, arrays: list[np.ndarray]) -> list:
        """The inputs on the device, copied into this thread's previous inputs of the same shapes (a
        copy into an existing tensor costs a fifth of a new one; a batch split's parts differ in size,
        so each keeps its own). Outputs are copied out as numpy arrays, so one that aliases an input is
        not overwritten by the next call."""
        signature = tuple((a.shape, a.dtype) for a in arrays)
        held = state.inputs.get(signature)
        if held is None:
            tensors = [tvm_runtime.empty(a.shape, a.dtype.name, self.device) for a in arrays]
            held = state.inputs[signature] = (tensors, [tvm_runtime.copier(t) for t in tensors])
        for copy, a in zip(held[1], arrays):
            copy(a)
        return held[0]

    def time(self, arrays: list[np.ndarray], repeat: int) -> list[float]:
        """Milliseconds of ``repeat`` runs after warm-up, timed as the baselines are (on a remote
        device by the device's own timer, so the network is not counted)."""
        with self._call():
            state = self._state()
            calls = self._calls(state, arrays)
            if self.session is not None:
                timers = [(state.vm.time_evaluator(name, self.device, number=1, repeat=repeat + 3), args)
                          for name, _fn, args in calls]
                return [sum(t) * 1e3 for t in zip(*(timer(*args).results[3:] for timer, args in timers))]
            if len(calls) == 1:
                _name, fn, args = calls[0]
                return time_calls(lambda: fn(*args), repeat)
            return time_calls(lambda: [fn(*args) for _name, fn, args in calls], repeat)

    def profile(self, arrays: list[np.ndarray], repeat: int) -> Profile:
        """Each kernel's milliseconds within ``repeat`` runs (:mod:`reforge.profiling`); a GPU is
        synchronized around every kernel."""
        if self.session is not None:
            raise ReforgeError("--profile times kernels in this process; time a module on an RPC device whole "
                               "with --print-time")
        on_cpu = self.device.dlpack_device_type() == tvm_runtime.CPU
        sync = (lambda: None) if on_cpu else self.device.sync

        with self._call():
            state = self._state()
            calls = self._calls(state, arrays)
            set_instrument = state.vm["set_instrument"]

            def run(mark: Callable[[str, bool], None]) -> None:
                def hook(_func, name: str, before: bool, _ret, *_args) -> int:
                    if not name.startswith("vm.builtin."):
                        sync()
                        mark(name, before)
                    return 0  # VMInstrumentReturnKind.NO_OP

                set_instrument(hook)
                for _name, fn, args in calls:
                    fn(*args)
                sync()

            try:
                return profile_calls(run, repeat)
            finally:
                set_instrument(None)


@dataclass
class _ThreadState:
    """One thread's VM, its functions by name and its input tensors by the inputs' shapes and dtypes."""

    vm: object
    functions: dict
    inputs: dict = field(default_factory=dict)  # signature -> (tensors, a copier per tensor: numpy -> it)

    def function(self, name: str):
        fn = self.functions.get(name)
        if fn is None:
            fn = self.functions[name] = self.vm[name]
        return fn


def time_calls(fn: Callable[[], object], repeat: int, warmup: int = 3) -> list[float]:
    """Milliseconds of ``repeat`` calls of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times
