"""Running a Relax executable on numpy inputs, checked against its signature."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import tvm
from tvm import relax

from reforge.frontend.tensor_spec import TensorSpec

from .errors import ReforgeError
from .profiling import Profile, profile_calls


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
    if isinstance(value, tvm.runtime.Tensor):
        return [value.numpy()]
    return [a for v in value for a in _flatten(v)]


class Runner:
    """A Relax VM over an executable (in memory, loaded from a .so, or on an RPC ``session``)."""

    emulated = False  # runs on the target's own CPU / GPU

    def __init__(self, executable, device=None, session=None):
        self.device = device if device is not None else tvm.cpu()
        self.session = session  # keeps a remote device's session open
        self.vm = relax.VirtualMachine(executable, self.device)
        self.main = self.vm["main"]
        self.inputs: list[tvm.runtime.Tensor] = []

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return _flatten(self.main(*self._on_device(arrays)))

    def _on_device(self, arrays: list[np.ndarray]) -> list[tvm.runtime.Tensor]:
        """The inputs on the device, copied into the previous call's tensors where the shapes match
        (a copy into an existing tensor costs a fifth of a new one). Outputs are copied out as numpy
        arrays, so one that aliases an input is not overwritten by the next call."""
        if [(tuple(t.shape), str(t.dtype)) for t in self.inputs] != [(a.shape, a.dtype.name) for a in arrays]:
            self.inputs = [tvm.runtime.tensor(a, self.device) for a in arrays]
        else:
            for tensor, a in zip(self.inputs, arrays):
                tensor.copyfrom(a)
        return self.inputs

    def time(self, arrays: list[np.ndarray], repeat: int) -> list[float]:
        """Milliseconds of ``repeat`` runs after warm-up, timed as the baselines are (on a remote
        device by the device's own timer, so the network is not counted)."""
        args = self._on_device(arrays)
        if self.session is not None:
            timer = self.vm.time_evaluator("main", self.device, number=1, repeat=repeat + 3)
            return [t * 1e3 for t in timer(*args).results[3:]]
        return time_calls(lambda: self.main(*args), repeat)

    def profile(self, arrays: list[np.ndarray], repeat: int) -> Profile:
        """Each kernel's milliseconds within ``repeat`` runs (:mod:`reforge.profiling`); a GPU is
        synchronized around every kernel."""
        if self.session is not None:
            raise ReforgeError("--profile times kernels in this process; time a module on an RPC device whole "
                               "with --print-time")
        args = self._on_device(arrays)
        on_cpu = self.device.dlpack_device_type() == tvm.cpu().dlpack_device_type()
        sync = (lambda: None) if on_cpu else self.device.sync

        def run(mark: Callable[[str, bool], None]) -> None:
            def hook(_func, name: str, before: bool, _ret, *_args) -> int:
                if not name.startswith("vm.builtin."):
                    sync()
                    mark(name, before)
                return 0  # VMInstrumentReturnKind.NO_OP

            self.vm.set_instrument(hook)
            self.main(*args)
            sync()

        try:
            return profile_calls(run, repeat)
        finally:
            self.vm.set_instrument(None)


def time_calls(fn: Callable[[], object], repeat: int, warmup: int = 3,
               clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Milliseconds of ``repeat`` calls of ``fn`` after ``warmup`` calls, by ``clock`` (wall time; the
    process's CPU time with ``time.process_time``)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        times.append((clock() - start) * 1e3)
    return times
