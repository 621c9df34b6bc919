"""Human-readable tables of a manifest: the compile report, verification, inspection."""

from __future__ import annotations

from .batching import BatchSpec


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def signature(manifest: dict) -> str:
    """Inputs and outputs; with batch buckets, their shapes at batch N and the buckets."""
    batch = BatchSpec.from_json(manifest.get("batch"))

    def shape(spec: dict) -> str:
        return str(spec["shape"]) if batch is None else "[" + ", ".join(["N", *map(str, spec["shape"][1:])]) + "]"

    sig = lambda specs: ", ".join(f"{s['name']}: {s['dtype']}{shape(s)}" for s in specs)
    text = f"inputs:  {sig(manifest['inputs'])}\noutputs: {sig(manifest['outputs'])}"
    return text if batch is None else f"{text}\nbatch:   N from {batch.describe()}"


def passes_report(manifest: dict) -> str:
    passes = manifest["passes"]
    if not passes:
        return f"passes (-O{manifest['opt_level']}): none"
    rows = []
    for p in passes:
        b, a = p["before"], p["after"]
        kinds = ", ".join(f"{k}: {v}" for k, v in p["rewrites"].items() if v) or "-"
        rows.append([p["name"], str(sum(p["rewrites"].values())), f"{_si(b['params'])} -> {_si(a['params'])}",
                     f"{_si(b['macs'])} -> {_si(a['macs'])}", f"{p['seconds']:.2f}", kinds])
    text = table(["pass", "rewrites", "params", "MACs", "s", "what"], rows)
    notes = [f"  {p['name']}: {n}" for p in passes for n in p["notes"]]
    layers = [f"  {p['name']}: {row['layer']}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "layer")
              for p in passes for row in p.get("layers", [])]
    return (f"passes (-O{manifest['opt_level']}):\n{text}" + ("\nnotes:\n" + "\n".join(notes) if notes else "")
            + ("\nlayers:\n" + "\n".join(layers) if layers else ""))


def verification_report(manifest: dict) -> str:
    ver = manifest.get("verification")
    if not ver:
        return "verification: not run (use --verify)"
    rows = [[c["stage"], c["reference"], f"{c['max_abs']:.3g}", f"{c['rel']:.3g}", f"{c['rtol']:g}",
             "ok" if c["ok"] else "FAIL"] for c in ver["checks"]]
    head = f"verification (random inputs, seed {ver['seed']}; rel = max|err| / max|reference|):"
    text = head + "\n" + table(["stage", "against", "max abs", "rel", "tolerance", ""], rows)
    return text + "".join(f"\n{ver[k]}" for k in ("emulated", "skipped") if ver.get(k))


def build_report(manifest: dict) -> str:
    b = manifest["build"]
    rules = ", ".join(f"{rule} x{n}" for rule, n in sorted(b["schedules"].items()))
    moves = f" ({b['layout_transforms']} layout transforms)" if b.get("layout_transforms") else ""
    return f"build:   {b['seconds']:.1f} s; layout {b['layout']}{moves}; schedules: {rules}"


def compile_report(manifest: dict) -> str:
    from .backends import for_manifest  # whose base imports the artifact, whose runners print tables from here

    t = manifest["target"]
    lines = [f"model:   {manifest['model']['name']} ({manifest['model']['source']})", signature(manifest),
             f"target:  {t['name']} ({for_manifest(t).summary()})",
             "", passes_report(manifest), build_report(manifest), "", verification_report(manifest)]
    return "\n".join(lines)


def inspect_report(manifest: dict, path: str, size: int) -> str:
    files = "\n".join(f"  {name}  sha256 {digest}" for name, digest in manifest.get("files", {}).items())
    versions = ", ".join(f"{k} {v}" for k, v in manifest["versions"].items())
    return "\n".join([f"artifact: {path} ({size / 1e6:.2f} MB, {manifest['format']}, created {manifest['created']})",
                      compile_report(manifest), "", f"run:     {manifest['run']}", "", f"files:\n{files}",
                      f"built with: {versions}"])
