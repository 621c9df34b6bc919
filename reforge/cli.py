"""The ``reforge`` command: compile | tune | run | inspect | passes | bench, in the manner of tvmc."""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import threads
from .errors import ReforgeError, one_line


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2)."""

    def error(self, message):
        self.exit(2, f"reforge: error: {message} (see '{self.prog} --help')\n")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an .onnx file or a saved torch.export program (.pt2)")
    p.add_argument("--target", default="x86",
                   help="target preset: x86, x86-avx2, x86-avx512, arm (aarch64, cross-compiled), arm-a76, "
                        "cuda; default x86")
    p.add_argument("--cuda-arch", metavar="sm_XY", help="GPU architecture for --target cuda (default sm_80)")
    p.add_argument("-O", dest="opt_level", type=int, default=2, metavar="LEVEL",
                   help="optimization level: -O0 imports and lowers only, -O1 canonicalizes, -O2 (default) "
                        "runs every exact and profitable rewrite for the target")
    p.add_argument("--enable-pass", action="append", default=[], metavar="NAME", help="add a pass")
    p.add_argument("--disable-pass", action="append", default=[], metavar="NAME", help="remove a pass")
    p.add_argument("--passes", metavar="A,B,...", help="run exactly these passes (and their prerequisites)")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:D0xD1x...",
                   help="fix an input's shape, e.g. x:1x3x224x224 (repeat or comma-separate)")


def _add_rpc_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rpc-tracker", metavar="HOST:PORT", help="measure / run on devices behind this RPC tracker")
    p.add_argument("--rpc-key", metavar="KEY", help="the key the devices registered under")


def _remote(args):
    if args.rpc_tracker is None and args.rpc_key is None:
        return None
    from .remote import RemoteDevices

    return RemoteDevices.parse(args.rpc_tracker, args.rpc_key)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="reforge", description=__doc__)
    parser.add_argument("--verbose", action="store_true", help="show tracebacks and progress")
    parser.add_argument("--version", action="store_true", help="print versions and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("compile", help="compile a model into a deployable artifact (.tar)")
    _add_model_options(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.tar", help="artifact to write")
    p.add_argument("--verify", action="store_true",
                   help="check every pass and the final module on random inputs (exit 3 on a mismatch)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random verification inputs")
    p.add_argument("--report", metavar="REPORT.json", help="also write the compile report as JSON")
    p.add_argument("--tuning-records", metavar="RECORDS.json", help="apply records written by `reforge tune`")
    p.add_argument("--max-batch", type=int, metavar="B",
                   help="run every batch from 1 to B: the batch axis (axis 0) named in --input-shape "
                        "(image:Nx3x224x224) or left dynamic in the model; compiles buckets 1, 2, 4, ..., B")

    p = sub.add_parser("tune", help="search schedules with MetaSchedule (XGBoost cost model)")
    _add_model_options(p)
    p.add_argument("--trials", type=int, required=True, help="measured candidates, over all tasks")
    p.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds (records so far are kept)")
    p.add_argument("-o", "--output", required=True, metavar="RECORDS.json", help="records to write")
    p.add_argument("--tuning-records", metavar="PRIOR.json", help="resume from earlier records")
    _add_rpc_options(p)

    p = sub.add_parser("run", help="run a compiled artifact")
    p.add_argument("artifact", metavar="OUT.tar")
    p.add_argument("--inputs", metavar="IN.npz|IN.npy",
                   help="inputs by name (.npz) or the single input (.npy); default: random N(0,1)")
    p.add_argument("-o", "--output", metavar="OUT.npz", help="write the outputs by name")
    p.add_argument("--print-time", action="store_true", help="time the module")
    p.add_argument("--profile", action="store_true", help="time each kernel within whole runs")
    p.add_argument("--repeat", type=int, default=20, help="timed runs for --print-time / --profile (default 20)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="threads of the run (default: every physical core this process may use)")
    _add_rpc_options(p)

    p = sub.add_parser("inspect", help="show an artifact's manifest")
    p.add_argument("artifact", metavar="OUT.tar")
    p.add_argument("--json", action="store_true", help="print the raw manifest")

    sub.add_parser("passes", help="list every pass with its summary and paper")

    p = sub.add_parser("bench", help="compile, then time reforge against onnxruntime / OpenVINO / PyTorch")
    _add_model_options(p)
    p.add_argument("--against", default="onnxruntime,torch",
                   help="baselines, comma-separated: onnxruntime, openvino (the ONNX file only), torch")
    p.add_argument("--threads", type=int, metavar="N",
                   help="threads for every runtime (default: every physical core this process may use)")
    p.add_argument("--repeat", type=int, default=30, help="timed runs per runtime (median; at least 20)")
    p.add_argument("--json", metavar="OUT.json", help="also write the results as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error already printed as one line
        return done.code
    try:
        if getattr(args, "threads", None) is not None:
            if args.threads < 1:
                raise ReforgeError(f"--threads {args.threads}: must be at least 1")
            threads.prepare(args.threads)  # TVM sizes each pool once, when it starts
        if args.version:
            return _version()
        if args.command is None:
            build_parser().print_help()
            return 2
        return _COMMANDS[args.command](args)
    except ReforgeError as err:
        artifact = getattr(err, "artifact", None)
        if artifact is not None:
            from .report_format import compile_report

            print(compile_report(artifact.manifest))
        if args.verbose:
            raise
        print(f"reforge: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("reforge: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug in reforge or TVM: say so in one line unless --verbose
        if args.verbose:
            raise
        print(f"reforge: internal error: {one_line(err)} (rerun with --verbose for the traceback)",
              file=sys.stderr)
        return 1


def _compile_options(args) -> dict:
    from reforge.frontend import parse_input_shapes

    from .backends import preset_name

    return dict(target=preset_name(args.target, args.cuda_arch), opt_level=args.opt_level, enable_passes=args.enable_pass,
                disable_passes=args.disable_pass, input_shapes=parse_input_shapes(args.input_shape),
                passes=[p for p in args.passes.split(",") if p] if args.passes is not None else None)


def _log(args):
    return (lambda msg: print(f"[reforge] {msg}", file=sys.stderr)) if args.verbose else None


def _compile(args) -> int:
    import reforge
    from .report_format import compile_report

    artifact = reforge.compile(args.model, verify=args.verify, seed=args.seed, log=_log(args),
                               tuning_records=args.tuning_records, max_batch=args.max_batch, **_compile_options(args))
    artifact.save(args.output)
    print(compile_report(artifact.manifest))
    print(f"\nwrote {args.output}")
    if args.report:
        with open(args.report, "w") as f:
            json.dump(artifact.manifest, f, indent=2)
    return 0


def _tune(args) -> int:
    from reforge.autotune import tune
    from .report_format import table

    options = _compile_options(args)
    remote = _remote(args)
    result = tune(args.model, options.pop("target"), trials=args.trials, output=args.output,
                  prior=args.tuning_records, timeout=args.timeout, remote=remote,
                  log=lambda msg: print(msg, file=sys.stderr), **options)
    rows = [[t.name, str(t.weight), "-" if t.default_ms is None else f"{t.default_ms:.3f}",
             "-" if t.best_ms is None else f"{t.best_ms:.3f}"] for t in result.tasks]
    print(table(["task", "calls", "default ms", "best ms"], rows))
    print(f"\n{result.trials} trials in {result.seconds:.0f} s{' (time budget reached)' if result.timed_out else ''}; "
          f"estimated latency {result.total_ms('default_ms'):.3f} ms default -> "
          f"{result.total_ms('best_ms'):.3f} ms tuned")
    print(f"wrote {result.records} records to {args.output}")
    return 0


def _read_inputs(path: str, names: list[str]):
    import numpy as np

    if not os.path.isfile(path):
        raise ReforgeError(f"inputs file '{path}' not found")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ReforgeError(f"cannot read inputs '{path}': {one_line(err)} (expected .npz or .npy)") from err
    if isinstance(data, np.ndarray):
        if len(names) != 1:
            raise ReforgeError(f"'{path}' holds one array but the module takes {len(names)} inputs "
                               f"({', '.join(names)}); use an .npz keyed by input name")
        return {names[0]: data}
    with data:
        return {k: data[k] for k in data.files}


def _run(args) -> int:
    import numpy as np

    import reforge

    artifact = reforge.load(args.artifact, remote=_remote(args), threads=args.threads)
    names = [s.name for s in artifact.inputs]
    if args.inputs:
        inputs = _read_inputs(args.inputs, names)
    else:
        rng = np.random.default_rng(0)
        inputs = {s.name: s.random(rng) for s in artifact.inputs}
        print("no --inputs given: running on random N(0,1) inputs (seed 0)")
    outputs = artifact.run(inputs)
    for name, value in outputs.items():
        flat = value.reshape(-1)
        head = np.array2string(flat[:8], precision=5, separator=", ", max_line_width=1000)
        print(f"{name}: {value.dtype}{list(value.shape)} {head}{' ...' if flat.size > 8 else ''}")
    if args.output:
        np.savez(args.output, **outputs)
        print(f"wrote {args.output}")
    if (args.print_time or args.profile) and args.repeat < 1:
        raise ReforgeError("--repeat must be at least 1")
    emulated = "  (emulated on this CPU: not the device's speed)" if artifact.emulated else ""
    if args.print_time:
        t = np.asarray(artifact.time(inputs, args.repeat))
        print(f"time over {args.repeat} runs (ms): mean {t.mean():.3f}  median {np.median(t):.3f}  "
              f"min {t.min():.3f}  max {t.max():.3f}  std {t.std():.3f}{emulated}")
    if args.profile:
        print(artifact.profile(inputs, args.repeat).format(emulated))
    return 0


def _inspect(args) -> int:
    import reforge
    from .report_format import inspect_report

    artifact = reforge.load(args.artifact)
    if args.json:
        print(json.dumps(artifact.manifest, indent=2))
    else:
        print(inspect_report(artifact.manifest, args.artifact, os.path.getsize(args.artifact)))
        commands = artifact.backend.native_commands(artifact.manifest, args.artifact)
        if commands:
            print("\nrun without Python (C API: reforge/native/reforge_runtime.h; docs/targets.md#native-host):")
            print("\n".join(f"  {c}" for c in commands))
            if artifact.batch is not None:
                print("  (the C API runs the batch-1 function, main; larger batches run through reforge run / "
                      "reforge.load)")
    return 0


def _passes(_args) -> int:
    from reforge.backends import kinds_defaulting_to
    from reforge.passes.registry import PASSES
    from .report_format import table

    rows = []
    for p in PASSES.values():
        default = "off" if p.level is None else f"-O{p.level}+" + (
            f" on {', '.join(kinds_defaulting_to(p.name)) or 'no target'}" if p.per_target else "")
        rows.append([p.name, default, ", ".join(p.requires) or "-", p.summary])
    print(table(["pass", "default", "requires", "summary"], rows))
    print("\npapers:")
    for p in PASSES.values():
        print(f"  {p.name}: {p.paper}")
    return 0


def _bench(args) -> int:
    import reforge
    from reforge.bench import baseline_runners, bench, format_bench, parse_baselines
    from reforge.backends import get

    against = parse_baselines(args.against)
    n = threads.check(args.threads)
    options = _compile_options(args)
    backend = get(options["target"])
    if not backend.runs_on_host_cpu():
        raise ReforgeError(f"bench times modules on this CPU, which cannot run target '{options['target']}' "
                           "natively; time it on the device with `reforge run --print-time --rpc-tracker ...`")
    options["target"] = backend
    artifact = reforge.compile(args.model, log=_log(args), **options)
    runners = baseline_runners(args.model, artifact.imported, against, n)
    results = bench(artifact, artifact.imported, runners, n, args.repeat)
    print(format_bench(results, n))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "threads": n, "target": artifact.manifest["target"],
                       "results": [r.to_json() for r in results]}, f, indent=2)
    return 0


def _version() -> int:
    from importlib.metadata import version

    import reforge

    print(f"reforge {reforge.__version__} (apache-tvm {version('apache-tvm')})")
    return 0


_COMMANDS = {"compile": _compile, "tune": _tune, "run": _run, "inspect": _inspect, "passes": _passes, "bench": _bench}

if __name__ == "__main__":
    sys.exit(main())
