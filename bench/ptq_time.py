"""ptq's time against quantsim's on the real-model corpus (issue 15: at most 6x), whole processes.

For each corpus model (bench/zoo_models.py; the zoo's cached models and its calibration samples,
bench/zoo_data.py), `aimetcli quantsim MODEL --data CALIB` and `aimetcli ptq MODEL --data CALIB`
(no --eval, so nothing is scored that quantsim does not score) run alternately, ``--rounds``
times each, one process at a time: quantsim, ptq, quantsim, ptq, ... so both see the same
load. Reported per model: the median wall and CPU (user + system) seconds of each, their ratios,
and the load average around the model's runs. Wall time is what a user waits; CPU time is the
figure that moves least with the other tenants of the shared 2-core machine.

    .venv-zoo/bin/python bench/ptq_time.py [--models a,b] [--rounds 3] [--no-write]

bench/zoo.py also reports a time ratio, from one run of each command with two zoo workers side
by side; this script is the measurement the 6x goal is checked against.
"""

from __future__ import annotations

import os
import shutil
import statistics
from dataclasses import dataclass, field

import common
from zoo import N_CALIB, model_and_data
from zoo_models import ZOO, ZooModel, corpus_arguments, kept_rows, selected

RUNS = ZOO / "time_runs"
JSON = common.DATA / "ptq_time.json"
LIMIT = 6.0


@dataclass
class Timed:
    model: str
    quantsim_wall: list[float] = field(default_factory=list)
    quantsim_cpu: list[float] = field(default_factory=list)
    ptq_wall: list[float] = field(default_factory=list)
    ptq_cpu: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    error: str = ""

    def ratio(self, kind: str) -> float | None:
        q, p = getattr(self, f"quantsim_{kind}"), getattr(self, f"ptq_{kind}")
        if not q or not p:
            return None
        return statistics.median(p) / statistics.median(q)


def _run(args: list[str]) -> common.ProcessRun:
    return common.run_process([str(a) for a in args], check=False)


def time_model(m: ZooModel, rounds: int) -> Timed:
    path, ds, _ = model_and_data(m)
    work = RUNS / m.name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    res = Timed(m.name)
    aim = common.AIMETCLI
    res.load.append(os.getloadavg()[0])
    for _ in range(rounds):
        for cmd, args in (("quantsim", [aim, "quantsim", path, "-o", work / "sim.onnx", "--data", ds.calib]),
                          ("ptq", [aim, "ptq", path, "-o", work / "ptq", "--data", ds.calib])):
            run = _run(args)
            if run.returncode != 0:
                res.error = f"{cmd} exited {run.returncode}: {run.stderr.strip().splitlines()[-1:]}"
                return res
            getattr(res, f"{cmd}_wall").append(run.seconds)
            getattr(res, f"{cmd}_cpu").append(run.cpu_seconds)
            shutil.rmtree(work / "ptq", ignore_errors=True)
        res.load.append(os.getloadavg()[0])
    common.log(f"{m.name}: quantsim {statistics.median(res.quantsim_wall):.1f} s, ptq "
               f"{statistics.median(res.ptq_wall):.1f} s: {res.ratio('wall'):.1f}x wall, {res.ratio('cpu'):.1f}x CPU")
    return res


def render(results: list[Timed], rounds: int) -> str:
    rows = []
    for r in results:
        if r.error:
            rows.append([r.model, r.error, "", "", "", "", "", ""])
            continue
        med = statistics.median
        rows.append([r.model, f"{med(r.quantsim_wall):.1f}", f"{med(r.ptq_wall):.1f}", f"{r.ratio('wall'):.1f}x",
                     f"{med(r.quantsim_cpu):.1f}", f"{med(r.ptq_cpu):.1f}", f"{r.ratio('cpu'):.1f}x",
                     f"{min(r.load):.1f}-{max(r.load):.1f}"])
    ok = [r for r in results if not r.error]
    over = [r.model for r in ok if (r.ratio("wall") or 0) > LIMIT]
    ratios = sorted(r.ratio("wall") or 0 for r in ok)
    lines = [
        f"`aimetcli quantsim` and `aimetcli ptq` (defaults, no --eval) on each corpus model with the zoo's {N_CALIB} "
        f"calibration samples, alternated one process at a time, {rounds} runs each (bench/ptq_time.py). Medians; "
        "CPU = user + system seconds of the process. Load: 1-minute load average before and after the model's runs "
        "(2 shared cores).",
        "",
        common.table(["model", "quantsim s", "ptq s", "ptq / quantsim", "quantsim CPU s", "ptq CPU s", "CPU ratio",
                      "load"], rows, "lrrrrrrr"),
        "",
    ]
    if ratios:
        lines.append(f"Wall ratio over {len(ok)} models: median {statistics.median(ratios):.1f}x, highest "
                     f"{ratios[-1]:.1f}x; over {LIMIT:.0f}x: {', '.join(over) if over else 'none'}.")
    return "\n".join(lines)


def main() -> None:
    ap = corpus_arguments(__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    everything = [Timed(**v) for v in kept_rows(selected(args.models), JSON, lambda m: time_model(m, args.rounds))]
    body = render(everything, args.rounds)
    common.publish("ptq-time", "ptq's time against quantsim's on the real models (issue 15)", body, args.no_write)


if __name__ == "__main__":
    main()
