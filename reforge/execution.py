"""Running a Relax executable on numpy inputs, checked against its signature."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from reforge.frontend.tensor_spec import TensorSpec

from . import tvm_runtime
from .errors import ReforgeError
from .profiling import Profile, profile_calls
from .threads import check as check_threads, running


def check_inputs(specs: list[TensorSpec], inputs) -> list[np.ndarray]:
    """Order ``inputs`` (a dict by name, a list, or one array) as ``specs``, refusing mismatches."""
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
        if tuple(a.shape) != spec.shape:
            raise ReforgeError(f"input '{spec.name}' has shape {list(a.shape)}; the module was compiled "
                               f"for {list(spec.shape)}")
        if a.dtype.name != spec.dtype:
            raise ReforgeError(f"input '{spec.name}' has dtype {a.dtype.name}; the module expects {spec.dtype}")
        arrays.append(np.ascontiguousarray(a))
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
    :func:`reforge.threads.default_threads`); calls that overlap others run on one thread each."""

    emulated = False  # runs on the target's own CPU / GPU

    def __init__(self, executable, device=None, session=None, threads: int | None = None):
        self.module = executable.jit() if hasattr(executable, "jit") else executable  # an in-memory build
        self.device = device if device is not None else tvm_runtime.cpu()
        self.session = session  # keeps a remote device's session open
        self.threads = None if threads is None else check_threads(threads)
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
            state = self._local.state = _ThreadState(vm, vm["main"])
        return state

    def _call(self):
        """Around one call: the RPC session held, or this thread's share of the local cores."""
        return self._remote if self.session is not None else running(self.threads)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        with self._call():
            state = self._state()
            return _flatten(state.main(*self._on_device(state, arrays)))

    def _on_device(self, state: _ThreadState, arrays: list[np.ndarray]) -> list:
        """The inputs on the device, copied into this thread's previous inputs where the shapes match
        (a copy into an existing tensor costs a fifth of a new one). Outputs are copied out as numpy
        arrays, so one that aliases an input is not overwritten by the next call."""
        signature = [(a.shape, a.dtype) for a in arrays]
        if signature != state.signature:
            state.inputs = [tvm_runtime.empty(a.shape, a.dtype.name, self.device) for a in arrays]
            state.copy_in = [tvm_runtime.copier(t) for t in state.inputs]
            state.signature = signature
        for copy, a in zip(state.copy_in, arrays):
            copy(a)
        return state.inputs

    def time(self, arrays: list[np.ndarray], repeat: int) -> list[float]:
        """Milliseconds of ``repeat`` runs after warm-up, timed as the baselines are (on a remote
        device by the device's own timer, so the network is not counted)."""
        with self._call():
            state = self._state()
            args = self._on_device(state, arrays)
            if self.session is not None:
                timer = state.vm.time_evaluator("main", self.device, number=1, repeat=repeat + 3)
                return [t * 1e3 for t in timer(*args).results[3:]]
            return time_calls(lambda: state.main(*args), repeat)

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
            args = self._on_device(state, arrays)
            set_instrument = state.vm["set_instrument"]

            def run(mark: Callable[[str, bool], None]) -> None:
                def hook(_func, name: str, before: bool, _ret, *_args) -> int:
                    if not name.startswith("vm.builtin."):
                        sync()
                        mark(name, before)
                    return 0  # VMInstrumentReturnKind.NO_OP

                set_instrument(hook)
                state.main(*args)
                sync()

            try:
                return profile_calls(run, repeat)
            finally:
                set_instrument(None)


@dataclass
class _ThreadState:
    """One thread's VM, its ``main`` and the input tensors of its last call."""

    vm: object
    main: object
    inputs: list = field(default_factory=list)
    copy_in: list = field(default_factory=list)  # a function per input: numpy array -> its tensor
    signature: list | None = None  # (shape, dtype) of each input


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
