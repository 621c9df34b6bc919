"""Re-parameterizable networks: reforge on the TRAINING form against onnxruntime on the DEPLOY form.

    .venv/bin/python benchmarks/rep_training_form.py [--threads 1] [--rounds 5] [--repeat 10]
                                                     [--models repvgg_a0,mobileone_s0]
                                                     [--tune TRIALS [--keep DIR]] [--profile]

RepVGG-A0 (Ding et al., CVPR 2021; benchmarks/imagenet_shapes.py) and MobileOne-S0 (Vasu et al.,
CVPR 2023, written here from the paper: a 3×3/2 stem block, then stages of 2-8-10-1 blocks at widths
48-128-256-1024, each block a depthwise 3×3 then a pointwise 1×1 MobileOne block with k = 4
conv-BN branches, a 1×1 conv-BN scale branch on the 3×3 blocks and a BN identity branch where the
shapes allow, then ReLU), random weights and BatchNorm statistics, 1x3x224x224. reforge compiles the
training form's ONNX file (every branch with its BatchNorm) at -O2; the deploy form is the same
network with every block merged by hand here in PyTorch (BatchNorm into each kernel, 1×1 and identity
at the 3×3 centre, branches summed), exported to ONNX and run by onnxruntime (all graph optimizations)
and by PyTorch; reforge also compiles the training form with merge-branches off (every branch a conv
of its own, BatchNorm folded into each), the baseline the pass is measured against. All in one
process on the same inputs, alternating rounds so drift in the machine's speed hits all. Checks
that the deploy form and reforge's rewritten graph hold the paper's number of convs, and prints
median ms, ratios and the outputs' relative difference. With ``--tune N`` the
training form is first tuned for N trials (``reforge tune``, measured on this thread count) and
compiled with the records; ``--keep DIR`` keeps them as ``DIR/MODEL-N.json`` and reuses a file
already there, so a tuning done once is timed again on a quiet machine. ``--profile`` also prints the
milliseconds of each layer kind (stem, 1×1, k×k, depthwise convs, classifier, the rest) in reforge
(its kernels timed in place, ``Runner.profile``) and in onnxruntime (its own profiler's node times).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import warnings

THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
os.environ["TVM_NUM_THREADS"] = THREADS  # tuning measures in worker processes, which read this

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.results import markdown_table, write_table  # noqa: E402
import reforge  # noqa: E402
from reforge.autotune import tune  # noqa: E402
from reforge.bench import onnxruntime_runner, set_threads  # noqa: E402
from reforge.execution import time_calls  # noqa: E402
from reforge.verify import compare  # noqa: E402
from benchmarks.imagenet_shapes import RepVGGA0, _RepVGGBlock  # noqa: E402
from tests.zoo import randomize_batchnorm  # noqa: E402


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout))


class MobileOneBlock(nn.Module):
    """Training form: k conv-BN branches, a 1×1 conv-BN scale branch (k×k blocks only), a BN identity
    (stride 1, cin == cout), summed, then ReLU."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int, branches: int):
        super().__init__()
        self.convs = nn.ModuleList([_conv_bn(cin, cout, k, stride, groups) for _ in range(branches)])
        self.scale = _conv_bn(cin, cout, 1, stride, groups) if k > 1 else None
        self.identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None

    def forward(self, x):
        out = sum(c(x) for c in self.convs)
        out = out + self.scale(x) if self.scale is not None else out
        return torch.relu(out + self.identity(x) if self.identity is not None else out)


class MobileOneS0(nn.Module):
    """MobileOne-S0: width multipliers (0.75, 1, 1, 2), k = 4 branches (the stem block has one)."""

    def __init__(self, classes: int = 1000, branches: int = 4):
        super().__init__()
        blocks, cin = [MobileOneBlock(3, 48, 3, 2, 1, 1)], 48
        for width, depth in [(48, 2), (128, 8), (256, 10), (1024, 1)]:
            for i in range(depth):
                blocks.append(MobileOneBlock(cin, cin, 3, 2 if i == 0 else 1, cin, branches))  # depthwise
                blocks.append(MobileOneBlock(cin, width, 1, 1, 1, branches))  # pointwise
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))

    def forward(self, image):
        return self.head(self.blocks(image))


# deploy-form convs per the papers: RepVGG-A0 1+2+4+14+1 3×3 layers; MobileOne-S0 the stem and a
# depthwise + pointwise pair for each of 2+8+5+5+1 blocks
MODELS = {"repvgg_a0": (RepVGGA0, 22), "mobileone_s0": (MobileOneS0, 1 + 2 * 21)}


# ----------------------------------------------------------------------------- deploy form, by hand


def _fold(branch: nn.Module, cin: int, groups: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv-BN branch, or a lone BN (the identity), as a ``size``×``size`` kernel and a bias."""
    bn = branch[1] if isinstance(branch, nn.Sequential) else branch
    if isinstance(branch, nn.Sequential):
        w = branch[0].weight
    else:  # the identity: a Dirac kernel per group
        w = torch.zeros(cin, cin // groups, 1, 1)
        w[torch.arange(cin), torch.arange(cin) % (cin // groups), 0, 0] = 1.0
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    pad = (size - w.shape[2]) // 2
    return nn.functional.pad(w * s.reshape(-1, 1, 1, 1), [pad] * 4), bn.bias - bn.running_mean * s


@torch.no_grad()
def deploy(block: nn.Module) -> nn.Sequential:
    """One block of either network as ``conv(x, Σ W_b) + Σ b_b``, then ReLU."""
    if isinstance(block, _RepVGGBlock):
        first, branches = block.dense[0], [block.dense, block.pointwise, block.identity]
    else:
        first, branches = block.convs[0][0], [*block.convs, block.scale, block.identity]
    size = first.kernel_size[0]
    folded = [_fold(b, first.in_channels, first.groups, size) for b in branches if b is not None]
    conv = nn.Conv2d(first.in_channels, first.out_channels, size, first.stride, size // 2, groups=first.groups)
    conv.weight.copy_(sum(w for w, _ in folded))
    conv.bias.copy_(sum(b for _, b in folded))
    return nn.Sequential(conv, nn.ReLU())


def deploy_form(model: nn.Module) -> nn.Module:
    return nn.Sequential(*[deploy(b) for b in model.blocks], model.head).eval()


# ----------------------------------------------------------------------------- timing


def export(module: nn.Module, path: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(1, 3, 224, 224),), path, input_names=["image"], opset_version=17,
                          dynamo=False, do_constant_folding=False)
    return path


def _convs(art) -> int:
    return next(p for p in art.manifest["passes"] if p["name"] == "dead-code")["after"]["ops"].get("nn.conv2d", 0)


# ----------------------------------------------------------------------------- per layer kind (--profile)

KINDS = ("stem conv", "1×1 convs", "k×k convs", "depthwise convs", "classifier", "rest")


def _conv_kind(data: list[int], kernel_size: int) -> str:
    """A dense conv's kind from its data shape (NCHW or blocked NCHWc) and kernel size."""
    channels = data[1] * (data[4] if len(data) == 5 else 1)
    return "stem conv" if channels <= 4 else "1×1 convs" if kernel_size == 1 else "k×k convs"


def reforge_kinds(art, arrays) -> dict[str, str]:
    """Each kernel of ``art``'s module -> its kind, from its name and the shapes it is called with."""
    kinds: dict[str, str] = {}

    def hook(_func, name: str, before: bool, _ret, *args) -> int:
        if before and not name.startswith("vm.builtin.") and name not in kinds:
            shapes = [[int(d) for d in a.shape] for a in args if hasattr(a, "shape")]
            kinds[name] = ("depthwise convs" if "depthwise" in name else
                           "classifier" if "dense" in name or "matmul" in name else
                           "k×k convs" if "winograd" in name else
                           _conv_kind(shapes[0], shapes[1][2]) if "conv2d" in name else "rest")
        return 0

    art.runner.vm.set_instrument(hook)
    art.runner.run(arrays)
    art.runner.vm.set_instrument(None)
    return kinds


def onnxruntime_kinds(path: str, feeds: dict, threads: int, runs: int, folder: str) -> dict[str, float]:
    """Median ms per run of each layer kind in onnxruntime, from its own profiler's node times."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.enable_profiling = threads, True
    options.profile_file_prefix = os.path.join(folder, "ort")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for _ in range(runs + 3):
        session.run(None, feeds)
    with open(session.end_profiling()) as f:
        events = [e for e in json.load(f) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    per_run: list[dict[str, float]] = [dict.fromkeys(KINDS, 0.0) for _ in range(runs + 3)]
    seen: dict[str, int] = {}
    for e in events:
        i = seen[e["name"]] = seen.get(e["name"], -1) + 1
        op, shapes = e["args"]["op_name"], [next(iter(t.values())) for t in e["args"]["input_type_shape"]]
        kind = ("classifier" if op in ("Gemm", "MatMul") else "rest" if op != "Conv" else
                "depthwise convs" if shapes[1][1] == 1 and shapes[1][0] == shapes[0][1] > 1 else
                _conv_kind(shapes[0], shapes[1][2]))
        per_run[i][kind] += e["dur"] / 1e3
    return {k: statistics.median(r[k] for r in per_run[3:]) for k in KINDS}


def kinds_report(art, arrays, deploy_path: str, feeds: dict, threads: int, runs: int,
                 folder: str) -> list[tuple[str, float, float]]:
    """(layer kind, reforge ms, onnxruntime ms) per layer kind and for "all", median ms per run of ``runs``."""
    kinds = reforge_kinds(art, arrays)
    ours = dict.fromkeys(KINDS, 0.0)
    for kernel in art.runner.profile(arrays, runs).kernels:
        ours[kinds[kernel.name]] += kernel.ms
    theirs = onnxruntime_kinds(deploy_path, feeds, threads, runs, folder)
    return [(k, *((sum(ours.values()), sum(theirs.values())) if k == "all" else (ours[k], theirs[k])))
            for k in (*KINDS, "all")]


def kinds_text(rows: list[tuple[str, float, float]], runs: int) -> str:
    lines = [f"  per layer kind, median ms per run of {runs} (reforge's kernels, `reforge run --profile`; "
             "onnxruntime's nodes, its profiler; ratio onnxruntime / reforge):"]
    for k, mine, other in rows:
        ratio = f"  ({other / mine:.2f}x)" if mine else ""
        lines.append(f"    {k:16s} reforge {mine:6.3f}  onnxruntime {other:6.3f}{ratio}")
    return "\n".join(lines)


def kinds_markdown(rows: list[tuple[str, float, float]]) -> str:
    return markdown_table(["layer kind", "reforge (training form)", "onnxruntime (deploy form)", "ratio"],
                          [[k, f"{mine:.3f}", f"{other:.3f}", f"{other / mine:.2f}x" if mine else "-"]
                           for k, mine, other in rows])


def tuned_records(path: str, name: str, trials: int, keep: str | None, folder: str) -> str:
    """Records of ``trials`` tuning trials on the model at ``path``; kept in / reused from ``keep``."""
    kept = os.path.join(keep, f"{name}-{trials}.json") if keep else None
    if kept and os.path.exists(kept):
        return kept
    records = os.path.join(folder, "records.json")
    tune(path, trials=trials, output=records, log=lambda _msg: None)
    if kept:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(records, kept)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--models", default="repvgg_a0,mobileone_s0")
    parser.add_argument("--tune", type=int, default=0, help="tune the training form for this many trials first")
    parser.add_argument("--keep", help="keep the tuning records here; reuse the ones found")
    parser.add_argument("--profile", action="store_true", help="also time each layer kind in reforge and onnxruntime")
    args = parser.parse_args()
    set_threads(args.threads)
    rows, details = [], []
    for name in args.models.split(","):
        make, paper_convs = MODELS[name]
        torch.manual_seed(0)
        train = randomize_batchnorm(make())
        fused = deploy_form(train)
        with tempfile.TemporaryDirectory() as folder:
            train_path = export(train, os.path.join(folder, "train.onnx"))
            records = tuned_records(train_path, name, args.tune, args.keep, folder) if args.tune else None
            art = reforge.compile(train_path, tuning_records=records)
            unmerged = reforge.compile(train_path, disable_passes=["merge-branches"])
            deploy_path = export(fused, os.path.join(folder, "deploy.onnx"))
            ort_run = onnxruntime_runner(deploy_path, art.imported, args.threads)
            feeds = art.imported.random_inputs(0)
            kinds = kinds_report(art, list(feeds.values()), deploy_path, feeds, args.threads,
                                 args.rounds * args.repeat, folder) if args.profile else None
        convs = {"deploy form": sum(isinstance(m, nn.Conv2d) for m in fused.modules()),
                 "reforge -O2": _convs(art)}
        assert all(n == paper_convs for n in convs.values()), (convs, paper_convs)
        convs["reforge without merge-branches"] = _convs(unmerged)
        arrays, image = list(feeds.values()), torch.from_numpy(list(feeds.values())[0])

        def run_torch():
            with torch.no_grad():
                return fused(image)

        runs = {"reforge (training form)": lambda: art.runner.run(arrays),
                "reforge, merge-branches off": lambda: unmerged.runner.run(arrays),
                "onnxruntime (deploy form)": lambda: ort_run(feeds), "PyTorch (deploy form)": run_torch}
        ours = art.runner.run(arrays)
        with torch.no_grad():
            errs = {"reforge, merge-branches off": compare(unmerged.runner.run(arrays), ours)[1],
                    "onnxruntime": compare(ort_run(feeds), ours)[1],
                    "PyTorch deploy": compare([run_torch().numpy()], ours)[1],
                    "PyTorch training form": compare([train(image).numpy()], ours)[1]}
        times = {k: [] for k in runs}
        for _ in range(args.rounds):  # alternate, so all see the same machine
            times["reforge (training form)"] += art.runner.time(arrays, args.repeat)
            times["reforge, merge-branches off"] += unmerged.runner.time(arrays, args.repeat)
            for k in list(runs)[2:]:
                times[k] += time_calls(runs[k], args.repeat)
        base = statistics.median(times["reforge (training form)"])
        print(f"\n{name} 1x3x224x224, {args.threads} thread(s), "
              f"{f'tuned {args.tune} trials' if args.tune else 'untuned'}, median of {args.rounds}x{args.repeat} runs, "
              f"interleaved; convs {convs} (paper: {paper_convs}); reforge rewrites: "
              f"{next(p for p in art.manifest['passes'] if p['name'] == 'merge-branches')['rewrites']}")
        agreement = "outputs vs reforge (relative): " + ", ".join(f"{k} {v:.2g}" for k, v in errs.items())
        print(agreement)
        row = [name, str(args.threads), f"{convs['reforge without merge-branches']} → {convs['reforge -O2']}"]
        for k, ts in times.items():
            med = statistics.median(ts)
            print(f"  {k:28s} {med:8.2f} ms  (min {min(ts):.2f})  baseline / reforge {med / base:.2f}x")
            ratio = "" if k == "reforge (training form)" else f" ({med / base:.2f}x)"
            row.append(f"{med:.2f} ({min(ts):.2f}){ratio}")
        rows.append(row)
        details.append(f"{name}: {agreement}")
        if kinds:
            print(kinds_text(kinds, args.rounds * args.repeat))
            details.append(f"{name} by layer kind, median ms per run of {args.rounds * args.repeat}:\n\n"
                           + kinds_markdown(kinds))
    table = markdown_table(["model", "threads", "convs off → on", *times], rows)
    note = (f"{f'tuned {args.tune} trials' if args.tune else 'untuned'}; ms, median (min) of "
            f"{args.rounds}x{args.repeat} runs, interleaved; in brackets baseline / reforge (training form)")
    print(write_table("rep_training_form", f"{args.models} 1x3x224x224, {args.threads} thread(s)",
                      "\n\n".join([table, *details]), note))


if __name__ == "__main__":
    main()
