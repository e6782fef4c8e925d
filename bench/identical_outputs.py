"""Are the files every command writes byte-identical between two revisions of aimetcli?

    python bench/identical_outputs.py                     # main's merge-base against the work tree
    python bench/identical_outputs.py --base main --head HEAD
    python bench/identical_outputs.py --models sample_models/resnet_fmnist.onnx

Each revision is a source tree: ``--head`` defaults to this work tree as it is (uncommitted
changes included), and any other revision is unpacked with ``git archive`` into a temporary
directory (no worktree is registered). Every command (fold-bn, equalize, adaround with 100
iterations, bias-correct, quantsim, export, evaluate, ranges, ptq) runs on every sample model as its own process, with that tree
first on PYTHONPATH (the same interpreter and packages for both), the same arguments and the
same input files, in a directory of its own, with ``--json``. Then every file written, and the
``--json`` document, is compared: bytes for models and encodings; JSON (stdout, report.json)
after dropping timing fields (keys containing 'seconds'). The exit codes must agree too.

Prints a table (model, command, files compared, result) and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common import require_import_from

ROOT = Path(__file__).resolve().parents[1]
WORK_TREE = "work tree"
CALIB_SAMPLES = "200"  # calibration samples for the commands that calibrate (speed; the same both sides)
EVAL_SAMPLES = "500"


@dataclass(frozen=True)
class Command:
    """One command line; ``{model}``, ``{calib}`` and ``{eval}`` are filled in, and ``needs``
    names a command whose output directory it reads (export reads quantsim's sim.onnx)."""

    name: str
    args: tuple[str, ...]
    needs: str | None = None


COMMANDS = (
    Command("fold-bn", ("fold-bn", "{model}", "-o", "folded.onnx")),
    Command("equalize", ("equalize", "{model}", "-o", "equalized.onnx")),
    Command("adaround", ("adaround", "{model}", "-o", "adarounded.onnx", "--data", "{calib}", "--num-samples",
                         CALIB_SAMPLES, "--param-bw", "4", "--iterations", "100")),
    Command("bias-correct", ("bias-correct", "{model}", "-o", "corrected.onnx", "--data", "{calib}",
                             "--num-samples", CALIB_SAMPLES)),
    Command("quantsim", ("quantsim", "{model}", "-o", "sim.onnx", "--data", "{calib}", "--num-samples",
                         CALIB_SAMPLES)),
    Command("export", ("export", "../quantsim/sim.onnx", "-o", "deploy"), needs="quantsim"),
    Command("evaluate", ("evaluate", "{model}", "../quantsim/sim.onnx", "--data", "{eval}", "--num-samples",
                         EVAL_SAMPLES), needs="quantsim"),
    Command("ranges", ("ranges", "{model}")),
    Command("ptq", ("ptq", "{model}", "-o", "out", "--data", "{calib}", "--num-samples", CALIB_SAMPLES)),
)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def source_tree(rev: str, scratch: Path) -> Path:
    """The source of ``rev``: this work tree, or ``git archive`` of the revision unpacked in ``scratch``."""
    if rev == WORK_TREE:
        return ROOT
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    dest = scratch / f"src-{commit[:12]}"
    if not dest.exists():
        archive = scratch / f"{commit[:12]}.tar"
        subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), commit, "aimetcli"], cwd=ROOT,
                       check=True)
        dest.mkdir()
        with tarfile.open(archive) as tar:
            tar.extractall(dest)
    return dest


def run_side(tree: Path, out: Path, models: list[Path], calib: Path, evaluation: Path) -> dict:
    """Every command on every model, with ``tree``'s aimetcli: {(model, command): exit code}."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    out.mkdir(parents=True)
    require_import_from(tree, out, env)
    codes = {}
    for model in models:
        for cmd in COMMANDS:
            where = out / model.stem / cmd.name
            where.mkdir(parents=True)
            args = [a.format(model=model, calib=calib, eval=evaluation) for a in cmd.args]
            r = subprocess.run([sys.executable, "-m", "aimetcli", *args, "--json"], cwd=where, env=env,
                               capture_output=True)
            (where.parent / f"{cmd.name}.stdout.json").write_bytes(r.stdout)
            (where.parent / f"{cmd.name}.stderr.txt").write_bytes(r.stderr)
            codes[(model.stem, cmd.name)] = r.returncode
    return codes


def without_timings(obj):
    """``obj`` without the keys that hold times (any key containing 'seconds')."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if "seconds" not in k}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def same_file(a: Path, b: Path) -> bool:
    if a.suffix == ".json":
        try:
            return without_timings(json.loads(a.read_bytes())) == without_timings(json.loads(b.read_bytes()))
        except ValueError:  # not JSON (an empty stdout of a failed run): bytes
            pass
    return a.read_bytes() == b.read_bytes()


def compare(base: Path, head: Path, model: str, command: str) -> tuple[int, list[str]]:
    """(files compared, differences) of one command's outputs and its --json document."""
    a_dir, b_dir = base / model / command, head / model / command
    names = {p.relative_to(a_dir) for p in a_dir.rglob("*") if p.is_file()}
    names_b = {p.relative_to(b_dir) for p in b_dir.rglob("*") if p.is_file()}
    diffs = [f"only in base: {n}" for n in sorted(names - names_b)] + \
            [f"only in head: {n}" for n in sorted(names_b - names)]
    pairs = [(a_dir / n, b_dir / n, str(n)) for n in sorted(names & names_b)]
    stdout = f"{command}.stdout.json"
    pairs.append((base / model / stdout, head / model / stdout, "--json"))
    diffs += [label for a, b, label in pairs if not same_file(a, b)]
    return len(pairs), diffs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=None, help="revision to compare from (default: main's merge-base "
                                                     "with HEAD)")
    parser.add_argument("--head", default=WORK_TREE, help="revision to compare (default: the work tree)")
    parser.add_argument("--models", nargs="+", type=Path, default=sorted((ROOT / "sample_models").glob("*.onnx")))
    parser.add_argument("--keep", action="store_true", help="keep the outputs (their directory is printed)")
    args = parser.parse_args()
    base_rev = args.base or git("merge-base", "main", "HEAD")
    calib, evaluation = ROOT / "sample_models" / "calib.npz", ROOT / "sample_models" / "eval.npz"
    models = [m.resolve() for m in args.models]
    scratch = Path(tempfile.mkdtemp(prefix="aimetcli-identical-"))
    try:
        sides = {}
        for label, rev in (("base", base_rev), ("head", args.head)):
            tree = source_tree(rev, scratch)
            print(f"{label}: {rev} ({tree})", file=sys.stderr, flush=True)
            sides[label] = run_side(tree, scratch / label, models, calib, evaluation)
        rows, failed = [], False
        for model in models:
            for cmd in COMMANDS:
                key = (model.stem, cmd.name)
                count, diffs = compare(scratch / "base", scratch / "head", *key)
                codes = sides["base"][key], sides["head"][key]
                if codes[0] != codes[1]:
                    diffs.insert(0, f"exit {codes[0]} vs {codes[1]}")
                failed |= bool(diffs) or codes[0] != 0
                verdict = "identical" if not diffs else "DIFFERENT: " + ", ".join(diffs)
                rows.append((model.stem, cmd.name, str(count), f"exit {codes[1]}", verdict))
        print(f"base {base_rev[:12]} vs head {args.head if args.head == WORK_TREE else args.head}; timing fields "
              "(*seconds*) dropped from JSON, everything else byte for byte\n")
        print("| model | command | files | exit | outputs |")
        print("| --- | --- | ---: | --- | --- |")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        if args.keep:
            print(f"\noutputs kept in {scratch}", file=sys.stderr)
        return 1 if failed else 0
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
