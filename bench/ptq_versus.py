"""Whole ptq processes of two checkouts of aimetcli side by side on corpus models (alternated,
one process at a time), for a before/after of a change to ptq's cost.

    .venv-zoo/bin/python bench/ptq_versus.py --base /work/main --models a,b [--rounds 2]

Each checkout runs through PYTHONPATH; outputs SQNRs are read from report.json, so a change that
moves a decision shows next to its time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
from pathlib import Path

import common
from zoo import model_and_data
from zoo_models import CORPUS, EXPORTED, ZOO


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the other checkout (its root, holding aimetcli/)")
    ap.add_argument("--models", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    here = str(Path(__file__).resolve().parent.parent)
    checkouts = {"base": args.base, "this": here}
    by_name = {m.name: m for m in CORPUS + EXPORTED}
    rows = []
    for name in args.models.split(","):
        path, ds, _ = model_and_data(by_name[name])
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in checkouts}
        last: dict[str, list] = {}
        for _ in range(args.rounds):
            for label, root in checkouts.items():
                out = ZOO / "versus" / label
                shutil.rmtree(out, ignore_errors=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                run = common.run_process([common.AIMETCLI, "ptq", str(path), "-o", str(out), "--data", str(ds.calib)],
                                         env={**os.environ, "PYTHONPATH": root})
                times[label].append((run.seconds, run.cpu_seconds))
                stages = json.loads((out / "report.json").read_text())["ptq"]["stages"]
                last[label] = [(s["name"], s["kept"], s["calib_sqnr_db"], round(s["seconds"], 1)) for s in stages]
        med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
        common.log(f"{name}: base {med['base'][0]:.1f} s ({med['base'][1]:.1f} CPU), this {med['this'][0]:.1f} s "
                   f"({med['this'][1]:.1f} CPU); runs {times}")
        for label in checkouts:
            common.log(f"  {label}: " + "; ".join(f"{n} {'+' if k else '-' if k is False else ''}"
                                                  f"{'' if db is None else f'{db:.2f}'} {s}s" for n, k, db, s in last[label]))
        rows.append((name, med, times))
    for name, med, _ in rows:
        print(f"{name}: base {med['base'][0]:.1f} s / {med['base'][1]:.1f} CPU -> this {med['this'][0]:.1f} s / "
              f"{med['this'][1]:.1f} CPU")


if __name__ == "__main__":
    main()
