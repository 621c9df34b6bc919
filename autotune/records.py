"""Tuning records in one file, JSON Lines, that ``reforge tune`` writes and resumes from and
``reforge compile --tuning-records`` applies.

    {"format": "reforge-tuning-records/1", "target": {...}}     line 1: header
    {"workload": [structural hash, module]}                      MetaSchedule workloads
    {"record": [workload index, [trace, run secs, target, args]]}  MetaSchedule tuning records
    {"choice": {"pass": "fft-conv", "conv": key, "fft_size": L or null, "ms": {way: ms}}}
    {"choice": {"pass": "sparse", "layer": key, "sparse": bool, "ms": {way: ms}}}
                                                                 a pass's measured decision

MetaSchedule's own JSON database is two JSON Lines files in a folder; ``TuningRecords``
materializes one for MetaSchedule and writes it back as a single file; the choices (fft-conv's
direct or FFT per conv, ``autotune/fft_choice.py``; sparse's dense or sparse per layer,
``autotune/sparse_choice.py``) are reforge's own. Every line is checked
on load, and a bad one is reported with the file's path and the line number.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import tvm_ffi
from tvm.s_tir import meta_schedule as ms

from reforge.errors import ReforgeError, one_line
from reforge.topi_ext.fft_conv import FFTConvGeometry

FORMAT = "reforge-tuning-records/1"
_WORKLOADS, _RECORDS = "database_workload.json", "database_tuning_record.json"


class TuningRecords:
    """A MetaSchedule JSON database in a private folder, loaded from / saved to one file."""

    def __init__(self, target: dict):
        self.target = target
        self.choices: dict[str, dict] = {}  # conv / layer key -> fft-conv's / sparse's measured choice
        self.folder = tempfile.mkdtemp(prefix="reforge-records-")
        for name in (_WORKLOADS, _RECORDS):
            open(os.path.join(self.folder, name), "w").close()

    @classmethod
    def load(cls, path: str, target: dict) -> "TuningRecords":
        """Read ``path``, refusing a file for another target or with a malformed line."""
        if not os.path.isfile(path):
            raise ReforgeError(f"tuning records '{path}' not found")
        with open(path) as f:
            lines = f.read().splitlines()
        header = _parse(path, 1, lines[0] if lines else "")
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ReforgeError(f"{path}:1: not a reforge tuning-records file (expected format {FORMAT})")
        if _target_key(header.get("target", {})) != _target_key(target):
            raise ReforgeError(f"{path}: records were tuned for target '{header.get('target', {}).get('name')}' "
                               f"({_target_key(header.get('target', {}))}); this compile is for "
                               f"'{target['name']}' ({_target_key(target)})")
        records = cls(target)
        workloads: list = []
        entries: list[str] = []
        for number, line in enumerate(lines[1:], start=2):
            entry = _parse(path, number, line)
            if isinstance(entry, dict) and "workload" in entry:
                try:
                    workloads.append(ms.database.Workload.from_json(entry["workload"]))
                except Exception as err:  # TVM raises assorted types on a bad module blob
                    raise ReforgeError(f"{path}:{number}: bad workload: {one_line(err)}") from err
                entries.append(json.dumps(entry["workload"]))
            elif isinstance(entry, dict) and "record" in entry:
                index, body = _record_parts(path, number, entry["record"], len(workloads))
                try:
                    ms.database.TuningRecord.from_json(body, workloads[index])
                except Exception as err:  # TVM raises assorted types on a bad trace
                    raise ReforgeError(f"{path}:{number}: bad tuning record: {one_line(err)}") from err
                with open(os.path.join(records.folder, _RECORDS), "a") as f:
                    f.write(json.dumps([index, body]) + "\n")
            elif isinstance(entry, dict) and "choice" in entry:
                choice = entry["choice"]
                if isinstance(choice, dict) and choice.get("pass") == "sparse":
                    if not (isinstance(choice.get("layer"), str) and isinstance(choice.get("sparse"), bool)):
                        raise ReforgeError(f"{path}:{number}: a sparse choice is {{\"pass\": \"sparse\", "
                                           f"\"layer\": key, \"sparse\": true or false, \"ms\": {{...}}}}")
                    records.choices[choice["layer"]] = choice
                    continue
                if not (isinstance(choice, dict) and choice.get("pass") == "fft-conv"
                        and isinstance(choice.get("conv"), str)
                        and (choice.get("fft_size") is None or isinstance(choice.get("fft_size"), int))):
                    raise ReforgeError(f"{path}:{number}: a choice is {{\"pass\": \"fft-conv\", \"conv\": key, "
                                       f"\"fft_size\": integer or null, \"ms\": {{...}}}}")
                size, conv = choice["fft_size"], FFTConvGeometry.from_key(choice["conv"])
                if size is not None and (size & (size - 1) or conv is None or size <= max(conv.kh, conv.kw)):
                    raise ReforgeError(f"{path}:{number}: the fft-conv choice for conv {choice['conv']} has FFT size "
                                       f"{size}; it must be a power of two above the kernel size")
                records.choices[choice["conv"]] = choice
            else:
                raise ReforgeError(f"{path}:{number}: expected a 'workload', 'record' or 'choice' entry")
        with open(os.path.join(records.folder, _WORKLOADS), "w") as f:
            f.write("".join(e + "\n" for e in entries))
        return records

    def pass_options(self) -> dict[str, dict]:
        """Keyword arguments for the passes whose decisions were measured (``registry.make``)."""
        fft = {k: c["fft_size"] for k, c in self.choices.items() if c["pass"] == "fft-conv"}
        sparse = {k: c["sparse"] for k, c in self.choices.items() if c["pass"] == "sparse"}
        return {name: {"measured": measured} for name, measured in (("fft-conv", fft), ("sparse", sparse)) if measured}

    def database(self) -> ms.database.JSONDatabase:
        return ms.database.JSONDatabase(work_dir=self.folder, allow_missing=False)

    def count(self) -> int:
        with open(os.path.join(self.folder, _RECORDS)) as f:
            return sum(1 for line in f if line.strip())

    def settle(self, mod, measured: dict[str, float]) -> None:
        """Give the records of ``mod``'s workload whose trace (``str(trace)``) is in ``measured`` those
        latencies (seconds), and drop its other records that claim to be faster than the best of
        them: what is left ranks by the re-measured numbers. Use a fresh :meth:`database` after."""
        with open(os.path.join(self.folder, _WORKLOADS)) as f:
            workloads = [ms.database.Workload.from_json(json.loads(line)) for line in f if line.strip()]
        index = next(i for i, w in enumerate(workloads) if tvm_ffi.structural_equal(w.mod, mod))
        best = min(measured.values())
        kept = []
        with open(os.path.join(self.folder, _RECORDS)) as f:
            for line in filter(str.strip, f):
                number, body = json.loads(line)
                if number == index:
                    trace = str(ms.database.TuningRecord.from_json(body, workloads[index]).trace)
                    if trace in measured:
                        body[1] = [measured[trace]]
                    elif not body[1] or sum(map(float, body[1])) / len(body[1]) < best:
                        continue
                kept.append(json.dumps([number, body]) + "\n")
        with open(os.path.join(self.folder, _RECORDS), "w") as f:
            f.write("".join(kept))

    def save(self, path: str) -> None:
        """Write the folder's database to ``path`` as one file (atomically)."""
        lines = [json.dumps({"format": FORMAT, "target": self.target})]
        lines += [json.dumps({"choice": c}) for c in self.choices.values()]
        for name, key in ((_WORKLOADS, "workload"), (_RECORDS, "record")):
            with open(os.path.join(self.folder, name)) as f:
                lines += [json.dumps({key: json.loads(line)}) for line in f if line.strip()]
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _target_key(target: dict) -> str:
    """kind/CPU or GPU architecture[/triple]: what a schedule's speed depends on."""
    tvm_target = target.get("tvm", {})
    chip = tvm_target.get("mcpu") or tvm_target.get("arch")
    return f"{tvm_target.get('kind')}/{chip}/{tvm_target.get('mtriple', '')}".rstrip("/")


def _parse(path: str, number: int, line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise ReforgeError(f"{path}:{number}: not valid JSON ({err.msg})") from err


def _record_parts(path: str, number: int, record, n_workloads: int):
    if not (isinstance(record, list) and len(record) == 2 and isinstance(record[0], int)):
        raise ReforgeError(f"{path}:{number}: a record is [workload index, body]")
    if not 0 <= record[0] < n_workloads:
        raise ReforgeError(f"{path}:{number}: record refers to workload {record[0]}, but only "
                           f"{n_workloads} come before it")
    return record[0], record[1]
