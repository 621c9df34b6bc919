"""TVM's runtime half alone: tvm-ffi and ``libtvm_runtime.so``, all that running an artifact needs.

``import tvm`` loads the compiler too (``libtvm_compiler.so`` and a few hundred Python modules), and
tvm-ffi imports torch and ml_dtypes when it starts, for conversions reforge's runtime never makes
(it passes dtypes by name and tensors by bytes). So where neither is imported yet, tvm-ffi starts
without them; torch tensors still reach TVM later through DLPack. Everything here also works after
``import tvm``, which loads the same runtime library.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from functools import lru_cache

import numpy as np

POOLED_ALLOCATOR = 2  # the Relax VM's allocator kinds: 1 naive, 2 pooled
RPC_SESS_MASK = 128  # device types of an RPC session's devices carry this bit
CPU = 1  # DLPack's device type of the host CPU


@lru_cache(maxsize=None)
def ffi():
    """``tvm_ffi``, with ``libtvm_runtime.so`` loaded."""
    if "tvm_ffi" not in sys.modules:
        skipped = [name for name in ("torch", "ml_dtypes") if name not in sys.modules]
        sys.modules.update(dict.fromkeys(skipped))  # None: `import torch` inside tvm_ffi fails fast
        try:
            import tvm_ffi  # noqa: F401
        finally:
            for name in skipped:
                if sys.modules.get(name, 0) is None:
                    del sys.modules[name]
    import tvm_ffi

    if "tvm" not in sys.modules:
        package = importlib.util.find_spec("tvm").submodule_search_locations[0]
        ctypes.CDLL(os.path.join(package, "lib", "libtvm_runtime.so"), ctypes.RTLD_GLOBAL)
    return tvm_ffi


@lru_cache(maxsize=None)
def global_func(name: str):
    return ffi().get_global_func(name)


def cpu():
    return ffi().device("cpu", 0)


def load_module(path: str):
    """dlopen a module exported by ``export_library`` (``model.so``)."""
    return ffi().load_module(path)


def new_vm(module, device):
    """A Relax virtual machine over ``module``'s executable on ``device`` (pooled allocators, as
    ``relax.VirtualMachine`` makes it). Every VM of one module shares its constants, the weights: the
    VM uses a constant in place when it already lies on the device."""
    vm = module["vm_load_executable"]()
    devices = [device] if device.dlpack_device_type() % RPC_SESS_MASK == CPU else [device, cpu()]
    args = []
    for d in devices:
        args += [d.dlpack_device_type() % RPC_SESS_MASK, d.index, POOLED_ALLOCATOR]
    vm["vm_initialization"](*args)
    return vm


def empty(shape, dtype: str, device):
    return global_func("runtime.TVMTensorAllocWithScope")(ffi().Shape(shape), ffi().dtype(dtype), device, None)


def copier(tensor):
    """A function that copies a C-contiguous array of ``tensor``'s shape and dtype into it (on any
    device; on the CPU into a numpy view of the tensor, a tenth of the cost of TVM's byte copy)."""
    if tensor.device.dlpack_device_type() == CPU:
        view = np.from_dlpack(tensor)
        return lambda array: np.copyto(view, array)
    copy = global_func("runtime.TVMTensorCopyFromBytes")
    return lambda array: copy(tensor, array.ctypes.data_as(ctypes.c_void_p), array.nbytes)


def to_numpy(tensor) -> np.ndarray:
    """A copy of ``tensor`` (on any device) as a numpy array."""
    if tensor.device.dlpack_device_type() == CPU:
        return np.from_dlpack(tensor).copy()
    out = np.empty(tuple(tensor.shape), np.dtype(str(tensor.dtype)))
    global_func("runtime.TVMTensorCopyToBytes")(tensor, out.ctypes.data_as(ctypes.c_void_p), out.nbytes)
    return out


def set_pool_threads(n: int) -> None:
    """Use ``n`` workers of the calling thread's TVM pool (TVM keeps one pool per calling thread)."""
    global_func("runtime.config_threadpool")(1, n)  # 1: big cores, i.e. all of them on x86


def pool_threads() -> int:
    """Workers the calling thread's TVM pool uses."""
    return global_func("runtime.NumThreads")()
