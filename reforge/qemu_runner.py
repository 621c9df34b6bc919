"""Running an aarch64 module on this x86 machine: reforge's native runner under ``qemu-aarch64``.

The outputs are those of the real aarch64 code; the times are the emulator's, useful only to
compare modules run the same way.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

import numpy as np

from .errors import ReforgeError
from .toolchains import AARCH64_SYSROOT, QEMU_AARCH64, aarch64_program, require

TIMEOUT = 1800  # seconds for one emulated invocation


class QemuRunner:
    """``run`` / ``time`` as :class:`reforge.execution.Runner`, for an aarch64 ``model.so``."""

    emulated = True

    def __init__(self, library: bytes):
        self.qemu = require(QEMU_AARCH64, "running an 'arm' module on this machine")
        self.runner = aarch64_program("run_vm")
        self._folder = tempfile.TemporaryDirectory(prefix="reforge-qemu-")
        self.model = os.path.join(self._folder.name, "model.so")
        with open(self.model, "wb") as f:
            f.write(library)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return self._invoke(arrays, 0)[0]

    def time(self, arrays: list[np.ndarray], repeat: int) -> list[float]:
        return self._invoke(arrays, repeat)[1]

    def profile(self, _arrays: list[np.ndarray], _repeat: int):
        raise ReforgeError("--profile times each kernel in this process; an 'arm' module runs whole under qemu "
                           "(time it with --print-time)")

    def _invoke(self, arrays: list[np.ndarray], repeat: int) -> tuple[list[np.ndarray], list[float]]:
        with tempfile.TemporaryDirectory(dir=self._folder.name) as work:
            argv = [self.qemu, "-L", AARCH64_SYSROOT, self.runner, self.model, work, str(repeat)]
            for i, a in enumerate(arrays):
                path = os.path.join(work, f"in{i}.bin")
                np.ascontiguousarray(a).tofile(path)
                argv += [path, a.dtype.name, "x".join(map(str, a.shape)) if a.ndim else "scalar"]
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT)
            except subprocess.TimeoutExpired as err:
                raise ReforgeError(f"the aarch64 module did not finish under qemu in {TIMEOUT} s") from err
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
                raise ReforgeError(f"the aarch64 module failed under qemu: {last}")
            outputs, times = [], []
            for line in done.stdout.splitlines():
                fields = line.split()
                if fields[:1] == ["output"]:
                    shape = () if fields[3] == "scalar" else tuple(int(d) for d in fields[3].split("x"))
                    data = np.fromfile(os.path.join(work, f"out{fields[1]}.bin"), dtype=fields[2])
                    outputs.append(data.reshape(shape))
                elif fields[:1] == ["time_ms"]:
                    times = [float(t) for t in fields[1:]]
            return outputs, times
