"""Start-up of ``reforge run`` on the demo model (examples/smallcnn.onnx), against ``python -c`` running
the same model in onnxruntime, and where the time goes.

    .venv/bin/python benchmarks/startup.py [--rounds 7]

Every row is a fresh interpreter, timed from outside (wall clock, and the CPU seconds the child used,
which a busy machine inflates less); the commands take turns, round after round, and the table gives
each one's median. The steps of the breakdown each add one stage to the one above: interpreter,
numpy, tvm-ffi with TVM's runtime library (``reforge.tvm_runtime``), loading the artifact, its first
run; ``import tvm`` (the compiler half as well) for comparison.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.results import publish  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "examples", "smallcnn.onnx")
REFORGE = [sys.executable, "-m", "reforge"]
PY = [sys.executable, "-c"]
ORT = """
import numpy as np, onnxruntime as ort
s = ort.InferenceSession({model!r}, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
print(s.run(None, {{i.name: np.random.default_rng(0).standard_normal(i.shape).astype("float32")}})[0][0, :8])
"""
STEPS = {
    "python": "pass",
    "+ numpy": "import numpy",
    "+ tvm-ffi and libtvm_runtime": "import numpy; from reforge import tvm_runtime; tvm_runtime.ffi()",
    "+ load the artifact": "import reforge; reforge.load({art!r})",
    "+ first run": "import numpy as np, reforge; a = reforge.load({art!r}); a.run(np.zeros((1, 3, 32, 32), 'f4'))",
    "import tvm (compiler too), for comparison": "import tvm",
}


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and the child's CPU seconds (user + system) of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--note", default="", help="a line on the conditions, e.g. other load on the machine")
    args = parser.parse_args()
    import reforge

    with tempfile.TemporaryDirectory() as tmp:
        art = reforge.compile(MODEL).save(os.path.join(tmp, "smallcnn.tar"))
        commands = {
            "`reforge run smallcnn.tar`": REFORGE + ["run", art],
            "`reforge run smallcnn.tar --print-time`": REFORGE + ["run", art, "--print-time"],
            "`python -c` onnxruntime on smallcnn.onnx": PY + [ORT.format(model=MODEL)],
            **{f"step: {name}": PY + [code.format(art=art)] for name, code in STEPS.items()},
        }
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, argv in commands.items():
                samples[name].append(timed(argv))
    rows = ["| command | wall s (median) | CPU s (median) |", "|---|---:|---:|"]
    for name, runs in samples.items():
        rows.append(f"| {name} | {statistics.median(w for w, _ in runs):.2f} | "
                    f"{statistics.median(c for _, c in runs):.2f} |")
    note = (f"Median of {args.rounds} rounds, the commands interleaved; each a fresh interpreter. `reforge run` "
            "loads the artifact with tvm-ffi and libtvm_runtime alone (no torch, onnx, onnxruntime nor TVM's "
            "compiler); the 'step' rows add one stage each. " + args.note)
    publish("startup", "reforge run start-up against onnxruntime (demo model)", "\n".join(rows), note)


if __name__ == "__main__":
    main()
