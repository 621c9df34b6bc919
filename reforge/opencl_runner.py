"""Running an ``opencl-fpga`` artifact with pyopencl: on an FPGA board's OpenCL platform, or, for
emulation, on the CPU through PoCL (``pip install pocl-binary-distribution``).

The kernels are single work-item, so each launch is a 1×1 NDRange (``clEnqueueTask``).
"""

from __future__ import annotations

import json
import time

import numpy as np

from .errors import ReforgeError, one_line
from .opencl_plan import PARAMS, PLAN, PLAN_FORMAT, SOURCE
from .profiling import Profile, profile_calls


_DEVICE = None


def context_and_queue(cl):
    """One context and in-order queue per process (on PoCL, many contexts in one process crash)."""
    global _DEVICE
    if _DEVICE is None:
        context = cl.create_some_context(interactive=False)
        _DEVICE = context, cl.CommandQueue(context)
    return _DEVICE


class OpenCLRunner:
    """``run`` / ``time`` as :class:`reforge.execution.Runner`, from the artifact's three files."""

    def __init__(self, files: dict[str, bytes]):
        try:
            import pyopencl as cl
        except ImportError as err:
            raise ReforgeError("running an opencl-fpga artifact needs pyopencl (pip install pyopencl; "
                               "pocl-binary-distribution emulates a device on the CPU)") from err
        self.cl = cl
        self.plan = json.loads(files[PLAN])
        if self.plan.get("format") != PLAN_FORMAT:
            raise ReforgeError(f"launch plan format {self.plan.get('format')!r}; this reforge reads {PLAN_FORMAT}")
        try:
            self.context, self.queue = context_and_queue(cl)
            self.emulated = bool(self.context.devices[0].type & cl.device_type.CPU)  # PoCL, not an FPGA
            self.program = cl.Program(self.context, files[SOURCE].decode()).build()
        except cl.Error as err:
            raise ReforgeError(f"no usable OpenCL device or kernels: {one_line(err)}") from err
        params = files[PARAMS]
        self.buffers = {}
        for b in self.plan["buffers"]:
            nbytes = int(np.prod(b["shape"], dtype=np.int64)) * np.dtype(b["dtype"]).itemsize
            flags = cl.mem_flags.READ_WRITE
            if b["kind"] == "param":
                host = np.frombuffer(params, np.uint8, b["nbytes"], b["offset"])
                self.buffers[b["name"]] = cl.Buffer(self.context, flags | cl.mem_flags.COPY_HOST_PTR, hostbuf=host)
            else:
                self.buffers[b["name"]] = cl.Buffer(self.context, flags, size=max(nbytes, 1))
        self.kernels = [(cl.Kernel(self.program, step["kernel"]), [self.buffers[a] for a in step["args"]],
                         tuple(step["global"]), tuple(step["local"])) for step in self.plan["launches"]]
        self.specs = {b["name"]: b for b in self.plan["buffers"]}

    def _copy_in(self, arrays: list[np.ndarray]) -> None:
        for name, a in zip(self.plan["inputs"], arrays):
            self.cl.enqueue_copy(self.queue, self.buffers[name], np.ascontiguousarray(a))

    def _launch(self, arrays: list[np.ndarray]) -> None:
        self._copy_in(arrays)
        for kernel, args, glob, local in self.kernels:
            kernel(self.queue, glob, local, *args)

    def run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        self._launch(arrays)
        outputs = []
        for name in self.plan["outputs"]:
            spec = self.specs[name]
            out = np.empty(spec["shape"], spec["dtype"])
            self.cl.enqueue_copy(self.queue, out, self.buffers[name])
            outputs.append(out)
        self.queue.finish()
        return outputs

    def time(self, arrays: list[np.ndarray], repeat: int) -> list[float]:
        self.run(arrays)  # warm-up
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            self._launch(arrays)
            self.queue.finish()
            times.append((time.perf_counter() - start) * 1e3)
        return times

    def profile(self, arrays: list[np.ndarray], repeat: int) -> Profile:
        """Each kernel's milliseconds within ``repeat`` runs (:mod:`reforge.profiling`): every
        launch is waited for before the next."""

        def run(mark) -> None:
            self._copy_in(arrays)
            self.queue.finish()
            for (kernel, args, glob, local), step in zip(self.kernels, self.plan["launches"]):
                mark(step["kernel"], True)
                kernel(self.queue, glob, local, *args)
                self.queue.finish()
                mark(step["kernel"], False)

        return profile_calls(run, repeat)
