"""Where benchmark scripts write their tables: ``benchmarks/results/NAME.md``, each run's table
stamped with the machine it ran on (CPU model, ISA, cores) and the date, newest run first, so the
numbers of different machines stay apart and the README can link one file per benchmark."""

from __future__ import annotations

import datetime
import os
import platform

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# the cores this process may run on, read at import: TVM's thread pool pins the main thread to one core once it
# runs (TVM_NUM_THREADS=1 or config_threadpool(1, 1)), after which the affinity mask says 1
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
_ISA_FLAGS = (("avx512f", "AVX-512"), ("avx512_vnni", "VNNI"), ("avx512_vpopcntdq", "VPOPCNTDQ"), ("avx2", "AVX2"),
              ("asimd", "NEON"))


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def machine() -> str:
    """``AMD EPYC (family 25, model 17), AVX-512 VNNI VPOPCNTDQ, 2 cores`` for this machine: the CPU model, the widest
    vector ISA (and the extensions the kernels use), the cores this process may run on."""
    info = _cpuinfo()
    model = info.get("model name") or info.get("Model") or platform.processor() or platform.machine()
    if "cpu family" in info and "model" in info:  # a VM's model name is often generic ("AMD EPYC"): which core
        model += f" (family {info['cpu family']}, model {info['model']})"
    flags = set((info.get("flags") or info.get("Features") or "").split())
    isa = [name for flag, name in _ISA_FLAGS if flag in flags]
    if "AVX-512" in isa and "AVX2" in isa:
        isa.remove("AVX2")
    return f"{model}, {' '.join(isa) or 'scalar'}, {_CORES} cores"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table: the header row, the separator, one line per row."""
    line = lambda cells: "| " + " | ".join(str(cell) for cell in cells) + " |"
    return "\n".join([line(header), "|" + "---|" * len(header), *(line(row) for row in rows)])


def publish(name: str, title: str, table: str, note: str = "") -> str:
    """Print a benchmark's ``note`` and markdown ``table`` as its report, then prepend both to
    ``benchmarks/results/NAME.md`` (``write_table``) and print that file's path."""
    print(f"\n{note}\n" if note else "")
    print(table)
    path = write_table(name, title, table, note)
    print(f"\nwritten to {path}")
    return path


def write_table(name: str, title: str, body: str, note: str = "") -> str:
    """Prepend one run's table (``body``, markdown) to ``benchmarks/results/NAME.md`` under a heading
    with ``title``, the machine and today's date; returns the file's path."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.md")
    header = f"# {name}\n\nNewest run first; every table names the machine it ran on.\n"
    old = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        old = old[len(header):] if old.startswith(header) else old
    stamp = f"## {title}\n\n{machine()}; {datetime.date.today().isoformat()}\n\n"
    text = header + "\n" + stamp + (note.strip() + "\n\n" if note else "") + body.strip() + "\n\n" + old.lstrip()
    with open(path, "w") as f:
        f.write(text.rstrip() + "\n")
    return path
