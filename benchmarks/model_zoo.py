"""Real networks from torchvision and timm: reforge against onnxruntime and OpenVINO on the same ONNX files.

    make zoo [MODELS=a,b] [THREADS=1,2]
    .venv/bin/python benchmarks/model_zoo.py [--models a,b] [--threads 1,2] [--repeat 30] [--skip-export]
                                             [--zoo-python .venv-zoo/bin/python] [--out out/zoo] [--tune TRIALS]

First exports the networks of ``benchmarks/zoo_export.py`` (run with ``--zoo-python``, the second venv
that holds torchvision and timm; ``--skip-export`` reuses ``OUT/NAME.onnx`` and ``OUT/NAME.npz``). Then,
for each network, in this process: compiles the ONNX file with reforge's defaults (-O2, x86, untuned),
timing the compile; checks reforge's output on the exported input against PyTorch's
(max|err| / max|PyTorch| <= 1e-4; a failure is a row of the table, not the end of the run); counts
the layout transforms the blocked layout left in the module and profiles it for its slowest kernel
(first thread count); then at each thread count times reforge, onnxruntime (CPU provider, no spin-waiting)
and OpenVINO (CPU plugin, latency hint, f32) on the same inputs, taking turns (``reforge.bench``).
The table, with each network's speed-up over the faster of the two (its time / reforge's) and their
geometric mean, goes to ``benchmarks/results/model_zoo.md``. ``--tune TRIALS`` also tunes each network
(``reforge tune``, records in ``--out``) and times the tuned build in the same turns.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import reforge  # noqa: E402  (imports no TVM yet: its thread pools start at the first run)
from benchmarks.results import markdown_table, publish  # noqa: E402
from benchmarks.zoo_export import INPUT, ZooModel, pick  # noqa: E402
from reforge.bench import baseline_runners, bench, set_threads  # noqa: E402
from reforge.errors import one_line  # noqa: E402
from reforge.native_log import quiet_stderr  # noqa: E402
from reforge.threads import physical_cores  # noqa: E402
from reforge.verify import compare  # noqa: E402

CORES = physical_cores()
TOLERANCE = 1e-4
PEERS = ("onnxruntime", "openvino")
TUNED = "reforge tuned"


def _threads(text: str) -> list[int]:
    threads = [int(t) for t in text.split(",") if t]
    if not threads or min(threads) < 1:
        raise argparse.ArgumentTypeError(f"bad --threads '{text}': thread counts of at least 1, comma-separated")
    return threads


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated names (default: the whole zoo)")
    parser.add_argument("--threads", type=_threads, default=sorted({1, CORES}),
                        help=f"thread counts, comma-separated (default 1,{CORES}: one and every physical core)")
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per runtime (median; at least 20)")
    parser.add_argument("--profile-runs", type=int, default=10, help="runs profiled for the slowest kernel")
    parser.add_argument("--skip-export", action="store_true", help="reuse the files already in --out")
    parser.add_argument("--zoo-python", default=os.path.join(ROOT, ".venv-zoo", "bin", "python"),
                        help="the python of the venv with torchvision and timm (make zoo creates .venv-zoo)")
    parser.add_argument("--out", default=os.path.join(ROOT, "out", "zoo"), help="where the exported files go")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    parser.add_argument("--tune", type=int, default=0, metavar="TRIALS",
                        help="also `reforge tune` each network with this many trials (records in --out) and time "
                             "the tuned build beside the untuned one")
    return parser.parse_args(argv)


def export(models: list[ZooModel], args: argparse.Namespace) -> None:
    """Run the export script in the zoo venv; networks it cannot export leave ``NAME.err`` behind."""
    if not os.path.exists(args.zoo_python):
        sys.exit(f"no python at '{args.zoo_python}': run `make zoo` (it creates .venv-zoo), pass --zoo-python, "
                 "or --skip-export to reuse the exported files")
    script = os.path.join(ROOT, "benchmarks", "zoo_export.py")
    subprocess.run([args.zoo_python, script, "--models", ",".join(m.name for m in models), "--out", args.out],
                   check=False)


def measure(model: ZooModel, args: argparse.Namespace) -> dict:
    """One row's numbers: compile, check, layout transforms, slowest kernel, then ms per runtime and thread count."""
    path = os.path.join(args.out, f"{model.name}.onnx")
    err_file = os.path.join(args.out, f"{model.name}.err")
    if os.path.exists(err_file):
        with open(err_file) as f:
            return {"failed": f"export: {f.read().strip()}"}
    if not os.path.exists(path):
        return {"failed": f"export: no {path}"}
    row: dict = {}
    start = time.perf_counter()
    try:
        with quiet_stderr():  # TVM's C++ warnings while building; a failure still says why, in one line
            art = reforge.compile(path)
    except Exception as err:  # a network reforge cannot compile is a row of the table
        return {"failed": f"compile: {one_line(err)}"}
    row["compile_s"] = time.perf_counter() - start
    row["macs"] = art.manifest["passes"][0]["before"]["macs"] if art.manifest["passes"] else None
    row["layout_transforms"] = art.manifest["build"]["layout_transforms"]
    row["layout"] = art.manifest["build"]["layout"]  # "NCHW (blocked layout not applied: why)" where it is not
    data = np.load(os.path.join(args.out, f"{model.name}.npz"))
    set_threads(args.threads[0])
    row["rel_err"] = compare(list(art.run({INPUT: data["input"]}).values()), [data["output"]])[1]
    profile = art.profile({INPUT: data["input"]}, args.profile_runs)
    slowest = profile.kernels[0]
    row["slowest"] = f"{slowest.name} {slowest.ms:.2f} ms ({100 * slowest.ms / profile.run_ms:.0f}%)"
    tuned = {}
    if args.tune:
        # in a process of its own: the search's builders and cost model left in this one slowed every runtime's
        # runs at 2 threads
        records = os.path.join(args.out, f"{model.name}.records.json")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "reforge", "tune", path, "--trials", str(args.tune), "-o", records],
                       check=True, stdout=subprocess.DEVNULL)
        row["tune_s"] = time.perf_counter() - start
        with quiet_stderr():
            tuned = {TUNED: reforge.compile(path, tuning_records=records)}
    for threads in args.threads:
        runners = baseline_runners(path, art.imported, PEERS, threads, spin=False)
        for timing in bench(art, art.imported, runners, threads, args.repeat, artifacts=tuned):
            row[timing.runtime, threads] = timing.unavailable or timing.median
        # the peers go before the next thread count: OpenVINO's compiled 1-thread model, left alive, slowed
        # every runtime's runs at 2 threads
        del runners
        gc.collect()
    return row


def _ms(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "-"


def speedup(row: dict, threads: int, ours: str = "reforge") -> float | None:
    """The faster peer's median over reforge's (``ours``: "reforge" or TUNED; above 1: reforge is faster)."""
    peers = [row.get((p, threads)) for p in PEERS]
    peers = [p for p in peers if isinstance(p, float)]
    mine = row.get((ours, threads))
    return min(peers) / mine if peers and isinstance(mine, float) else None


def matched(row: dict) -> bool:
    return "failed" not in row and row["rel_err"] <= TOLERANCE


def blocked(row: dict) -> str:
    """`` (NCHW)`` where the blocked layout was not applied at all (the progress line says why)."""
    return " (NCHW)" if row["layout"].startswith("NCHW (") else ""


def builds(rows: list[dict], threads: list[int]) -> tuple[str, ...]:
    """The reforge builds the rows timed: the untuned one, and the tuned one where ``--tune`` made it."""
    return ("reforge", TUNED) if any((TUNED, threads[0]) in row for row in rows) else ("reforge",)


def progress(row: dict, threads: list[int]) -> str:
    if "failed" in row:
        return f"failed: {row['failed']}"
    said = lambda v: f"{v:.2f} ms" if isinstance(v, float) else f"unavailable ({v})"  # noqa: E731
    shown = (*builds([row], threads), *PEERS)
    timed = "; ".join(f"{t}t: " + ", ".join(f"{r} {said(row.get((r, t)))}" for r in shown) for t in threads)
    return (f"compile {row['compile_s']:.1f} s, layout {row['layout']}, {row['layout_transforms']} layout "
            f"transforms, rel err "
            f"{row['rel_err']:.1e}, slowest {row['slowest']}; {timed}")


def table(models: list[ZooModel], rows: list[dict], threads: list[int]) -> str:
    head = ["network", "family", "GMACs", "compile s", "layout transforms", "max rel err",
            f"slowest kernel ({threads[0]}t)"]
    ours = builds(rows, threads)
    if len(ours) > 1:
        head.append("tuning s")
    for t in threads:
        head += [f"reforge ms ({t}t)"] + ([f"tuned ms ({t}t)"] if len(ours) > 1 else []) + [
            f"onnxruntime ms ({t}t)", f"OpenVINO ms ({t}t)", f"speed-up ({t}t)"] + (
            [f"tuned speed-up ({t}t)"] if len(ours) > 1 else [])
    lines = []
    for model, row in zip(models, rows):
        if "failed" in row:
            cells = [model.label, model.family, f"**failed** {row['failed']}"] + [""] * (len(head) - 3)
        else:
            cells = [model.label, model.family, "-" if row["macs"] is None else f"{row['macs'] / 1e9:.2f}",
                     f"{row['compile_s']:.1f}", f"{row['layout_transforms']}{blocked(row)}",
                     f"{row['rel_err']:.1e}" + ("" if matched(row) else " **mismatch**"), f"`{row['slowest']}`"]
            if len(ours) > 1:
                cells.append(f"{row['tune_s']:.0f}" if "tune_s" in row else "-")
            for t in threads:
                cells += [_ms(row.get((r, t))) for r in (*ours, *PEERS)]
                cells += ["-" if ratio is None else f"{ratio:.2f}x" for ratio in (speedup(row, t, b) for b in ours)]
        lines.append(cells)
    geo = ["**geometric mean**", "", "", "", "", "", ""] + ([""] if len(ours) > 1 else [])
    for t in threads:
        geo += [""] * (len(ours) + len(PEERS))
        for b in ours:
            ratios = [r for r in (speedup(row, t, b) for row in rows if matched(row)) if r]
            geo.append(f"**{math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}x**" if ratios else "-")
    return markdown_table(head, lines + [geo])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.repeat < 20:
        sys.exit(f"--repeat {args.repeat}: benchmarks take the median of at least 20 runs")
    # TVM sizes each thread pool once, when it starts (at the first run, after this): to the most threads
    # asked for, each count then taking that many of its workers (reforge.bench.set_threads)
    os.environ["TVM_NUM_THREADS"] = str(max(args.threads))
    models = pick(args.models)
    if not args.skip_export:
        export(models, args)
    rows = []
    for model in models:
        print(f"{model.label} ...", flush=True)  # progress: the whole zoo takes a while
        try:
            rows.append(measure(model, args))
        except Exception as err:  # a module that compiled but fails to run is a row too
            rows.append({"failed": f"run: {one_line(err)}"})
        print(f"  {progress(rows[-1], args.threads)}", flush=True)
    body = table(models, rows, args.threads)
    note = (f"reforge -O2 untuned (x86) vs onnxruntime (CPU provider, spin-waiting off) and OpenVINO (CPU "
            f"plugin, latency hint, f32 precision) on the same ONNX file (torch.onnx.export, TorchScript "
            f"exporter, opset 17; random weights, BatchNorm statistics randomized); median ms of "
            f"{args.repeat} runs, the runtimes taking turns in one process; speed-up = the faster peer's "
            f"ms / reforge's, its geometric mean over the networks that match; max rel err = "
            f"max|reforge - PyTorch| / max|PyTorch| (tolerance {TOLERANCE:g}).")
    if args.tune:
        note += (f" Tuned: `reforge tune` with {args.tune} trials per network (its seconds: tuning s), the tuned "
                 f"build timed in the same turns as the untuned one.")
    if args.no_write:
        print(f"\n{note}\n\n{body}")
    else:
        publish("model_zoo", f"{len(models)} networks, threads {','.join(map(str, args.threads))}", body, note)
    return 0 if all(matched(row) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
