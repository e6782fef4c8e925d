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


def versus_parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments of a bench that runs two checkouts on corpus models: --base, --models."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the other checkout (its root, holding aimetcli/)")
    ap.add_argument("--models", required=True)
    return ap


def checkouts(base: str) -> dict[str, str]:
    """{"base": the other checkout, "this": this one}: the roots each side's PYTHONPATH names."""
    return {"base": base, "this": str(Path(__file__).resolve().parent.parent)}


def corpus_models(names: str) -> list:
    """The corpus models named in ``names`` (comma-separated), in that order."""
    by_name = {m.name: m for m in CORPUS + EXPORTED}
    return [by_name[name] for name in names.split(",")]


def main() -> None:
    ap = versus_parser(__doc__)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    sides = checkouts(args.base)
    rows = []
    for model in corpus_models(args.models):
        name = model.name
        path, ds, _ = model_and_data(model)
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in sides}
        last: dict[str, list] = {}
        for _ in range(args.rounds):
            for label, root in sides.items():
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
        for label in sides:
            common.log(f"  {label}: " + "; ".join(f"{n} {'+' if k else '-' if k is False else ''}"
                                                  f"{'' if db is None else f'{db:.2f}'} {s}s" for n, k, db, s in last[label]))
        rows.append((name, med, times))
    for name, med, _ in rows:
        print(f"{name}: base {med['base'][0]:.1f} s / {med['base'][1]:.1f} CPU -> this {med['this'][0]:.1f} s / "
              f"{med['this'][1]:.1f} CPU")


if __name__ == "__main__":
    main()
