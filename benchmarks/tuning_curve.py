"""Tuning curve: trials of ``reforge tune`` against the model's latency, next to onnxruntime.

    .venv/bin/python benchmarks/tuning_curve.py [--model resnet18] [--size 224] [--steps 64,64,128]
        [--threads 1] [--timeout 900] [--rounds 5] [--repeat 10] [--keep DIR]
        [--svg benchmarks/results/tuning_curve.svg]

The model (from benchmarks/imagenet_shapes.py) is exported to ONNX once. Row 0 is the untuned
build (default schedules); each step then runs ``reforge tune`` for that many more trials,
resuming from the records so far. Then every row's build and onnxruntime are timed in this process
on the same inputs in interleaved rounds (each round times all of them in turn); medians. With
``--keep DIR`` each step's records are kept as ``DIR/MODEL-SIZE-stepI-TRIALS.json`` and a step
already there is not tuned again: tune once, then rerun to time every step on a quiet machine.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings

THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
os.environ["TVM_NUM_THREADS"] = THREADS  # TVM sizes its thread pool once, at first use

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.results import markdown_table, write_table  # noqa: E402
import reforge  # noqa: E402
from benchmarks.imagenet_shapes import MODELS  # noqa: E402
from reforge.autotune import tune  # noqa: E402
from reforge.bench import onnxruntime_runner, set_threads  # noqa: E402
from reforge.execution import time_calls  # noqa: E402
from tests.zoo import randomize_batchnorm  # noqa: E402


def kept_step(keep: str | None, stem: str, step: int) -> tuple[str, int] | None:
    """The records file of step ``step`` in ``keep`` and its trials so far, if a run left one."""
    found = sorted(glob.glob(os.path.join(keep, f"{stem}-step{step}-*.json"))) if keep else []
    return (found[0], int(found[0].rsplit("-", 1)[1][:-len(".json")])) if found else None


def timed_rows(path: str, records: list[str | None], threads: int, rounds: int, repeat: int):
    """Median ms of the model compiled with each records file (None: untuned), and onnxruntime's:
    ``rounds`` rounds, each timing every build and onnxruntime in turn, so drift hits all alike."""
    arts = [reforge.compile(path, tuning_records=r) for r in records]
    ort = onnxruntime_runner(path, arts[0].imported, threads)
    feeds = arts[0].imported.random_inputs(0)
    arrays = list(feeds.values())
    times: list[list[float]] = [[] for _ in range(len(arts) + 1)]
    for _ in range(rounds):
        for art, ts in zip(arts, times):
            ts += art.runner.time(arrays, repeat)
        times[-1] += time_calls(lambda: ort(feeds), repeat)
    medians = [statistics.median(ts) for ts in times]
    return medians[:-1], medians[-1]


def svg(rows: list[tuple[int, float, float]], title: str) -> str:
    """A line chart of reforge's latency (and onnxruntime's, dashed) against trials."""
    w, h, m = 560, 320, 50
    xmax = max(r[0] for r in rows) or 1
    ymax = max(max(r[1], r[2]) for r in rows) * 1.1

    def pt(x, y):
        return f"{m + (w - 2 * m) * x / xmax:.1f},{h - m - (h - 2 * m) * y / ymax:.1f}"

    ours = " ".join(pt(r[0], r[1]) for r in rows)
    ort = " ".join(pt(r[0], r[2]) for r in rows)
    ticks = "".join(f'<text x="{pt(r[0], 0).split(",")[0]}" y="{h - m + 16}" font-size="11" '
                    f'text-anchor="middle">{r[0]}</text>' for r in rows)
    yticks = "".join(f'<text x="{m - 6}" y="{pt(0, v).split(",")[1]}" font-size="11" text-anchor="end">'
                     f'{v:.0f}</text>' for v in (0, ymax / 2, ymax))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif">'
            f'<rect width="{w}" height="{h}" fill="white"/>'
            f'<text x="{w / 2}" y="20" font-size="13" text-anchor="middle">{title}</text>'
            f'<line x1="{m}" y1="{h - m}" x2="{w - m}" y2="{h - m}" stroke="black"/>'
            f'<line x1="{m}" y1="{m}" x2="{m}" y2="{h - m}" stroke="black"/>{ticks}{yticks}'
            f'<text x="{w / 2}" y="{h - 12}" font-size="12" text-anchor="middle">trials</text>'
            f'<text x="14" y="{h / 2}" font-size="12" transform="rotate(-90 14 {h / 2})" '
            f'text-anchor="middle">ms</text>'
            f'<polyline points="{ours}" fill="none" stroke="#c0392b" stroke-width="2"/>'
            f'<polyline points="{ort}" fill="none" stroke="#2c3e50" stroke-width="2" stroke-dasharray="6 4"/>'
            f'<text x="{w - m}" y="{m - 8}" font-size="11" text-anchor="end" fill="#c0392b">reforge</text>'
            f'<text x="{w - m}" y="{m + 6}" font-size="11" text-anchor="end" fill="#2c3e50">onnxruntime '
            f'(dashed)</text></svg>\n')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", choices=sorted(MODELS))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", default="64,64,128")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per tuning step")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--keep", help="keep each step's records in this folder; reuse the steps found there")
    parser.add_argument("--svg", help="write the curve as an SVG chart")
    args = parser.parse_args()
    set_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        path, records = os.path.join(folder, f"{args.model}.onnx"), os.path.join(folder, "records.json")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(randomize_batchnorm(MODELS[args.model]()), (torch.randn(1, 3, args.size, args.size),),
                              path, input_names=["image"], opset_version=17, dynamo=False, do_constant_folding=False)
        done, stem, steps = 0, f"{args.model}-{args.size}", [(0, None, 0.0)]  # (trials, records, tune s)
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
        for i, step in enumerate(int(s) for s in args.steps.split(",")):
            start, kept = time.perf_counter(), kept_step(args.keep, stem, i)
            if kept:
                shutil.copy(kept[0], records)
                done = kept[1]
            else:
                result = tune(path, trials=step, output=records, prior=records if done else None,
                              timeout=args.timeout, log=lambda _msg: None)
                done += result.trials
                if args.keep:
                    shutil.copy(records, os.path.join(args.keep, f"{stem}-step{i}-{done}.json"))
            snapshot = os.path.join(folder, f"step{i}.json")
            shutil.copy(records, snapshot)
            steps.append((done, snapshot, None if kept else time.perf_counter() - start))
        ours, ort = timed_rows(path, [r for _, r, _ in steps], args.threads, args.rounds, args.repeat)
        rows = [(trials, ms, ort) for (trials, _, _), ms in zip(steps, ours)]
        title = f"{args.model} 1x3x{args.size}x{args.size}, {args.threads} thread(s)"
        note = f"median of {args.rounds}x{args.repeat} runs each, interleaved; onnxruntime {ort:.2f} ms"
        print(f"{title}, {note}")
        print(f"{'trials':>6}  {'tune s':>7}  {'reforge ms':>10}  onnxruntime / reforge")
        table = []
        for (trials, _, secs), ms in zip(steps, ours):
            tuned = 'kept' if secs is None else f'{secs:.0f}'
            print(f"{trials:>6}  {tuned:>7}  {ms:>10.2f}  {ort / ms:.2f}x")
            table.append([str(trials), tuned, f"{ms:.2f}", f"{ort / ms:.2f}x"])
        print(write_table("tuning_curve", title, markdown_table(["trials", "tune s", "reforge ms",
                                                                 "onnxruntime / reforge"], table), note))
    if args.svg:
        os.makedirs(os.path.dirname(os.path.abspath(args.svg)), exist_ok=True)
        with open(args.svg, "w") as f:
            f.write(svg(rows, f"{args.model} at {args.size}x{args.size}, {args.threads} thread(s): "
                              "latency against tuning trials"))


if __name__ == "__main__":
    main()
