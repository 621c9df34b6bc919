"""How many threads reforge's kernels use: one rule, shared by ``reforge run``, ``reforge.load``,
``bench`` and ``tune``'s measurements, and the per-call switch that lets concurrent callers scale.

The default is every physical core the process may use: the CPUs of its affinity mask, SMT siblings
counted once, at most the cgroup's CPU quota (rounded up). TVM's own default is
``hardware_concurrency / 2`` on x86 (it assumes hyper-threading), which halves the cores of every
machine without SMT. TVM sizes each calling thread's worker pool once, from ``TVM_NUM_THREADS``,
when that thread first runs a parallel kernel; :func:`prepare` sets it (unless the user did) before
any pool starts, and turns off TVM's pinning of threads to cores (``TVM_BIND_THREADS=0``), which
ignores the affinity mask and puts the pools of concurrent callers on the same cores.
"""

from __future__ import annotations

import math
import os
import threading

SYS_CPU = "/sys/devices/system/cpu"
CGROUP = "/sys/fs/cgroup"


def physical_cores(cpus=None, sys_cpu: str = SYS_CPU, cgroup: str = CGROUP,
                   proc_cgroup: str = "/proc/self/cgroup") -> int:
    """Physical cores among ``cpus`` (default: this process's affinity mask), capped by the CPU quota.

    Logical CPUs are grouped by their ``thread_siblings_list`` (else by package and ``core_id``), so
    two hyper-threads of one core count once."""
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    cores = {_core_of(cpu, sys_cpu) for cpu in cpus}
    quota = cpu_quota(cgroup, proc_cgroup)
    n = len(cores) if quota is None else min(len(cores), math.ceil(quota))
    return max(1, n)


def _core_of(cpu: int, sys_cpu: str):
    """A key shared by the SMT siblings of ``cpu``: its sibling list, else (package, core id), else itself."""
    topology = os.path.join(sys_cpu, f"cpu{cpu}", "topology")
    siblings = _read(os.path.join(topology, "thread_siblings_list"))
    if siblings is not None:
        return ("siblings", siblings)
    core, package = _read(os.path.join(topology, "core_id")), _read(os.path.join(topology, "physical_package_id"))
    if core is not None:
        return ("core", package, core)
    return ("cpu", cpu)


def cpu_quota(cgroup: str = CGROUP, proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """CPUs the cgroup quota allows (quota / period), the smallest along the process's cgroup and its
    ancestors, cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``); None if unlimited."""
    limits = []
    for directory in _cgroup_dirs(cgroup, proc_cgroup):
        v2 = _read(os.path.join(directory, "cpu.max"))
        if v2 is not None:
            quota, _, period = v2.partition(" ")
            if quota != "max" and period:
                limits.append(int(quota) / int(period))
            continue
        quota, period = (_read(os.path.join(directory, f"cpu.cfs_{k}_us")) for k in ("quota", "period"))
        if quota is not None and period is not None and int(quota) > 0:
            limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def _cgroup_dirs(cgroup: str, proc_cgroup: str) -> list[str]:
    """The cgroup directories whose CPU limits apply to this process: its own and every ancestor, in the
    v2 hierarchy and in v1's cpu controller (a path missing in this mount namespace is skipped)."""
    paths = []
    for line in (_read(proc_cgroup) or "").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            paths.append((cgroup, path))
        elif "cpu" in controllers.split(","):
            paths += [(os.path.join(cgroup, mount), path) for mount in (controllers, "cpu", "cpu,cpuacct")]
    dirs = []
    for mount, path in paths:
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):
            d = os.path.join(mount, *parts[:depth])
            if os.path.isdir(d) and d not in dirs:
                dirs.append(d)
    return dirs


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def default_threads() -> int:
    """The threads a run uses unless told otherwise: ``TVM_NUM_THREADS`` where set (TVM's own setting,
    which :func:`prepare` fills in), else :func:`physical_cores`."""
    value = os.environ.get("TVM_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else physical_cores()


def prepare(threads: int | None = None) -> None:
    """Size TVM's pools before they start: ``threads`` (``reforge run --threads``), else the user's
    ``TVM_NUM_THREADS``, else :func:`physical_cores`; and leave thread placement to the OS.
    Child processes (tuning's measurement workers) inherit both settings."""
    os.environ["TVM_NUM_THREADS"] = str(threads if threads is not None else default_threads())
    os.environ.setdefault("TVM_BIND_THREADS", "0")


def check(threads: int | None) -> int:
    """``threads`` as asked (or the default), refused where TVM's pools cannot hold it."""
    from .errors import ReforgeError

    pool = default_threads()
    if threads is None:
        return pool
    if threads < 1:
        raise ReforgeError(f"threads={threads}: must be at least 1")
    if threads > pool:
        raise ReforgeError(f"threads={threads}: TVM's thread pools hold {pool} (TVM_NUM_THREADS, else this "
                           f"process's physical cores); set TVM_NUM_THREADS={threads} before importing reforge "
                           "for more")
    return threads


def use(threads: int | None) -> int:
    """Make ``threads`` (None: the default) the count of every run that names none, from now on and
    in the calling thread's pool at once (for code that calls a VM function directly); returns it."""
    global _chosen
    _chosen = check(threads)
    _set_pool(_chosen)
    return _chosen


_chosen: int | None = None  # set by use()
_LOCK = threading.Lock()
_active = 0  # runs in progress in this process
_LOCAL = threading.local()  # .threads: the worker count this thread's TVM pool is set to


def _set_pool(n: int) -> None:
    """Set the calling thread's TVM pool to ``n`` workers (TVM keeps one pool per calling thread, sized
    when it starts; ``runtime.config_threadpool`` sets how many of its workers the next kernels use)."""
    if getattr(_LOCAL, "threads", None) != n:
        from . import tvm_runtime

        tvm_runtime.set_pool_threads(n)
        _LOCAL.threads = n


class running:
    """Around one run on this CPU (``with running(threads):``): ``threads`` (None: the default) when it
    is the only run in progress, one thread when others are, so N callers on N cores each keep one
    core instead of all of them sharing every core (a run that overlaps others only later keeps its
    count to its end). A class rather than a generator: it wraps every call, and costs a third."""

    __slots__ = ("threads",)

    def __init__(self, threads: int | None):
        self.threads = threads

    def __enter__(self) -> None:
        global _active
        with _LOCK:
            _active += 1
            alone = _active == 1
        try:
            _set_pool((self.threads or _chosen or default_threads()) if alone else 1)
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *_exc) -> None:
        global _active
        with _LOCK:
            _active -= 1
