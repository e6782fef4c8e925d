"""CLI start-up: ``aimetcli --help`` / ``--version`` / a command's ``--help`` against a bare
``python -c "import click, rich"`` process (issue 16 point 6: within 2x of it).

Whole processes, run interleaved (one of each per round, so a load change on the
shared machine hits every command alike), median of the rounds. Writes the
"startup" section of bench/RESULTS.md.

    .venv/bin/python bench/bench_startup.py
"""

from __future__ import annotations

import statistics

import shutil
import tempfile
from pathlib import Path

from common import AIMETCLI, PYTHON, ROOT, fmt_s, log, repeats, run_process, table, write_section

SAMPLES = ROOT / "sample_models"
FOLD_OUT = Path(tempfile.mkdtemp(prefix="startup-")) / "folded.onnx"
ROUNDS = 9
GOAL = 2.0  # aimetcli --help within this factor of the click + rich baseline

CASES = [
    ("python -c pass (bare interpreter)", [PYTHON, "-c", "pass"]),
    ('python -c "import click, rich" (baseline)', [PYTHON, "-c", "import click, rich"]),
    ("aimetcli --help", [AIMETCLI, "--help"]),
    ("aimetcli --version", [AIMETCLI, "--version"]),
    ("aimetcli quantsim --help", [AIMETCLI, "quantsim", "--help"]),
    ("aimetcli ptq --help", [AIMETCLI, "ptq", "--help"]),
    ("aimetcli fold-bn (usage error)", [AIMETCLI, "fold-bn"]),
    ('python -c "import onnx"', [PYTHON, "-c", "import onnx"]),
    ("aimetcli fold-bn on the ResNet sample (a command at work)",
     [AIMETCLI, "fold-bn", str(SAMPLES / "resnet_fmnist.onnx"), "-o", str(FOLD_OUT)]),
]


def measure(rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name, _ in CASES}
    for i in range(rounds):
        for name, cmd in CASES:
            times[name].append(run_process(cmd, check=False).seconds)
        log(f"round {i + 1}/{rounds} done")
    return times


def main() -> None:
    rounds = max(repeats(ROUNDS), 1)
    try:
        times = measure(rounds)
    finally:
        shutil.rmtree(FOLD_OUT.parent, ignore_errors=True)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    baseline = med['python -c "import click, rich" (baseline)']
    rows = [[name, fmt_s(med[name]), fmt_s(min(times[name])), fmt_s(max(times[name])), f"{med[name] / baseline:.2f}x"]
            for name, _ in CASES]
    ratio = med["aimetcli --help"] / baseline
    body = (
        f"Whole processes, interleaved, median of {rounds} rounds each (min and max beside it). "
        "`--help`, `--version`, a command's `--help` and usage errors import no onnx, onnx-ir, onnxruntime or "
        "numpy (tests/test_cli_startup.py): the group loads a command's module only when it runs. A command at "
        "work imports onnx (ml_dtypes with it: pyproject bounds it below 0.7, docs/design.md) and onnxruntime.\n\n"
        + table(["process", "median", "min", "max", "vs baseline"], rows, "lrrrr")
        + f"\n\n`aimetcli --help` is {ratio:.2f}x the click + rich baseline "
        f"({'within' if ratio <= GOAL else 'NOT within'} the {GOAL:.0f}x goal)."
    )
    write_section("startup", "CLI start-up", body)
    print(body)


if __name__ == "__main__":
    main()
