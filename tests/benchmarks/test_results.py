"""benchmarks/results.py: the machine stamp, the markdown table, and write_table prepending a run to a file."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from benchmarks import results
from tests.helpers import ROOT

HEADER = "# {name}\n\nNewest run first; every table names the machine it ran on.\n"


def test_markdown_table():
    assert results.markdown_table(["a", "b"], [[1, "x"], ["2", 3.5]]) == \
        "| a | b |\n|---|---|\n| 1 | x |\n| 2 | 3.5 |"


def test_machine_counts_the_cores_after_tvm_pins_its_thread_pool():
    """TVM's thread pool, left to bind threads (TVM_BIND_THREADS=1), pins the main thread to one core once it
    runs at one thread; the stamp must still name the cores the process was given (a subprocess, so this
    test's own process stays unpinned)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from benchmarks import results; import os, tvm; "
            "tvm.get_global_func('runtime.config_threadpool')(1, 1); print(len(os.sched_getaffinity(0))); "
            "print(results.machine())")
    out = subprocess.run([sys.executable, "-c", code, ROOT], capture_output=True, text=True, check=True,
                         env={**os.environ, "TVM_NUM_THREADS": "1", "TVM_BIND_THREADS": "1"}).stdout.splitlines()
    cores = len(os.sched_getaffinity(0))
    assert out[-1].endswith(f", {cores} cores"), out
    if cores > 1:
        assert out[-2] == "1", "TVM no longer pins its main thread: the import-time snapshot is no longer needed"


def test_write_table_prepends_the_newest_run(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS", str(tmp_path))
    first = results.write_table("demo", "run one", "| a |\n|---|\n| 1 |", note="first")
    with open(first) as f:
        once = f.read()
    stamp = once.split("\n")[6]
    assert re.fullmatch(re.escape(results.machine()) + r"; \d{4}-\d{2}-\d{2}", stamp), stamp
    assert once == HEADER.format(name="demo") + "\n## run one\n\n" + stamp + "\n\nfirst\n\n| a |\n|---|\n| 1 |\n"
    results.write_table("demo", "run two", "| b |\n|---|\n| 2 |")
    with open(first) as f:
        twice = f.read()
    assert twice.count(HEADER.format(name="demo")) == 1
    assert twice.index("## run two") < twice.index("## run one")
    assert twice.endswith(once[len(HEADER.format(name="demo")):].lstrip())


def test_write_table_prepends_to_a_migrated_results_file(tmp_path, monkeypatch):
    """The files moved from the README take later runs on top, their tables kept below unchanged."""
    monkeypatch.setattr(results, "RESULTS", str(tmp_path))
    with open(os.path.join(ROOT, "benchmarks", "results", "zoo.md")) as f:
        old = f.read()
    (tmp_path / "zoo.md").write_text(old)
    results.write_table("zoo", "a new run", "| a | b |\n|---|---|\n| 1 | 2 |")
    new = (tmp_path / "zoo.md").read_text()
    assert new.startswith(HEADER.format(name="zoo") + "\n## a new run\n\n" + results.machine() + "; ")
    assert new.endswith(old[len(HEADER.format(name="zoo")):].lstrip())
