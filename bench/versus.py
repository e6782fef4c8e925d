"""One aimetcli command line, timed as whole processes with two revisions, interleaved.

    python bench/versus.py --base main -n 7 -- quantsim sample_models/mobilenetv2_fmnist.onnx \\
        -o {out}/sim.onnx --data sample_models/calib.npz --quant-scheme tf-enhanced

Each revision is a source tree as in identical_outputs.py (``--head`` defaults to this work
tree; another revision is unpacked with ``git archive``). The runs alternate base, head, base,
head, ... (the order of each pair flips every round), each a fresh ``python -m aimetcli``
process with that tree first on PYTHONPATH and ``{out}`` an empty directory of its own; paths
are relative to the repository root. Prints each side's median and spread of wall and CPU (user + system)
time, the head/base ratios of the medians and the load average before and after: the machine is shared, so compare ratios
within one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import require_import_from  # noqa: E402
from identical_outputs import ROOT, WORK_TREE, git, source_tree  # noqa: E402


def _env(tree: Path) -> dict[str, str]:
    """The environment that imports ``tree``'s aimetcli. The runs start in the repository root (the
    arguments' paths are relative to it), and ``python -m`` would put that directory first on
    sys.path, ahead of PYTHONPATH: PYTHONSAFEPATH (Python >= 3.11) leaves it out."""
    return {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0", "PYTHONSAFEPATH": "1"}


def run_once(tree: Path, args: list[str], scratch: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one process."""
    out = Path(tempfile.mkdtemp(dir=scratch))
    env = _env(tree)
    cmd = [sys.executable, "-m", "aimetcli", *[a.format(out=out) for a in args]]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr.decode(errors='replace')[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return seconds, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=None, help="revision (default: main's merge-base with HEAD)")
    parser.add_argument("--head", default=WORK_TREE, help="revision (default: the work tree)")
    parser.add_argument("-n", type=int, default=7, help="runs per side")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="aimetcli arguments after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the aimetcli arguments after --")
    base_rev = args.base or git("merge-base", "main", "HEAD")
    scratch = Path(tempfile.mkdtemp(prefix="aimetcli-versus-"))
    try:
        trees = {"base": source_tree(base_rev, scratch), "head": source_tree(args.head, scratch)}
        load_before = os.getloadavg()
        times: dict[str, list[tuple[float, float]]] = {"base": [], "head": []}
        for tree in trees.values():  # (PYTHONSAFEPATH needs Python >= 3.11)
            require_import_from(tree, ROOT, _env(tree))
        run_once(trees["base"], command, scratch)  # warm the page cache and .pyc files of both sides
        run_once(trees["head"], command, scratch)
        for i in range(args.n):
            for side in (("base", "head") if i % 2 == 0 else ("head", "base")):
                times[side].append(run_once(trees[side], command, scratch))
        load_after = os.getloadavg()
        print(f"aimetcli {' '.join(command)}")
        ratios = []
        for k, what in ((0, "wall"), (1, "CPU")):
            med = {side: statistics.median(t[k] for t in runs) for side, runs in times.items()}
            for side, rev in (("base", base_rev), ("head", args.head)):
                t = [r[k] for r in times[side]]
                print(f"  {what:4} {side} {rev[:12]:<12} median {med[side]:.3f} s (min {min(t):.3f}, "
                      f"max {max(t):.3f}, n={len(t)})")
            ratios.append(f"{what} {med['head'] / med['base']:.3f}")
        print(f"  head/base: {', '.join(ratios)}; load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
