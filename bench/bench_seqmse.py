#!/usr/bin/env python3
"""SeqMSE weight ranges: `aimetcli quantsim --weight-range mse` against min-max, W4A8.

For each sample model (BN folded first, as runtimes execute it), per-tensor and per-channel:
whole-process wall time of `aimetcli quantsim folded.onnx --data calib.npz --param-bw 4
[--per-channel] --weight-range minmax|mse` (the runs of a model interleaved, medians), and the
top-1 of each sim on sample_models/eval.npz (onnxruntime optimizations off: the simulation).

    python bench/bench_seqmse.py            # 3 repeats
    BENCH_QUICK=1 python bench/bench_seqmse.py
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402

SECTION = "seqmse"


def main() -> int:
    calib = C.sample_calib()
    models = [m for m in C.sample_models() if m.stem.endswith("_fmnist")]
    if calib is None or not models:
        C.log("no sample models: run `make sample-models` first")
        return 1
    from aimetcli import api
    from aimetcli.calibration.data import input_specs, open_data

    scratch = C.scratch_dir()
    n = C.repeats(3)
    rows = []
    for src in models:
        folded = C.folded_copy(src)
        ev = open_data(str(C.SAMPLE_MODELS / "eval.npz"), input_specs(api.load(str(folded))[0]))
        for granularity in ("--per-tensor", "--per-channel"):
            cmds = {}
            for wr in ("minmax", "mse"):
                out = scratch / f"{src.stem}_{granularity[2:]}_{wr}.onnx"
                cmds[wr] = ([C.PYTHON, "-m", "aimetcli", "quantsim", str(folded), "-o", str(out), "--data",
                             str(calib), "--param-bw", "4", "--act-bw", "8", granularity, "--weight-range", wr, "-q"],
                            out)
            times: dict[str, list[float]] = {"minmax": [], "mse": []}
            for _ in range(n):  # interleaved
                for wr, (cmd, _) in cmds.items():
                    times[wr].append(C.run_process(cmd, cwd=C.ROOT).seconds)
            top1 = {wr: api.evaluate([api.load(str(out))[0]], ev).top1[0] for wr, (_, out) in cmds.items()}
            t = {wr: C.Timing(v).median for wr, v in times.items()}
            rows.append([src.stem, granularity[2:], f"{top1['minmax']:.2f}", f"{top1['mse']:.2f}",
                         f"{top1['mse'] - top1['minmax']:+.2f}", C.fmt_s(t["minmax"]), C.fmt_s(t["mse"]),
                         C.fmt_x(t["mse"] / t["minmax"])])
            C.log(" | ".join(rows[-1]), f"(load {os.getloadavg()[0]:.1f})")
    body = (
        "W4A8 (weights 4-bit symmetric, activations 8-bit asymmetric, min-max activation ranges, AIMET's default "
        "config), on the BN-folded sample models; top-1 % on the 2,000 images of sample_models/eval.npz (sim, "
        f"onnxruntime optimizations off); time: whole `aimetcli quantsim` process, median of {n} interleaved runs "
        "(1,000 calibration samples; mse: SeqMSE over the same samples, then calibration).\n\n"
        + C.table(["model", "weights", "min-max top-1", "mse top-1", "Δ", "min-max time", "mse time", "mse / min-max"],
                  rows))
    shutil.rmtree(scratch, ignore_errors=True)
    C.write_section(SECTION, "SeqMSE weight ranges (`--weight-range mse`) against min-max, W4A8", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
