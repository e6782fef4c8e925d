#!/usr/bin/env python3
"""W8A8 on the full Fashion-MNIST test set (10,000 images): is the difference real?

bench/accuracy.py scores on the committed 2,000-image evaluation set, where one image
is 0.05 points: at W8 every method lands within a few images of FP32 and of each other.
This script scores the same W8A8 models on all 10,000 test images (0.01 points an
image): FP32; ptq per-tensor as ``aimetcli ptq`` runs it (range scheme auto: min-max
and tf-enhanced tried, the one with the higher calibration-data SQNR exported), and
with min-max only and tf-enhanced only; ptq per-channel, scheme auto (api.ptq itself:
fold-bn, equalize, hybrid bias correction, quantsim, each technique kept only where it
raises the calibration-data SQNR; calibration on sample_models/calib.npz);
onnxruntime's quantize_static per-tensor and per-channel.

Needs Debian's dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist, or
FASHION_MNIST_DIR); without it the script says so and writes nothing.
Run: ``python bench/accuracy_10k.py`` (writes the ``accuracy_10k`` section).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sample_models"))

import common as c  # noqa: E402

DATA_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
MODELS = ("mobilenetv2", "resnet", "shufflenetv2")
COLUMNS = ("FP32", "ptq per-tensor", "ptq per-tensor, min-max", "ptq per-tensor, tf-enhanced", "ptq per-channel",
           "quantize_static per-tensor", "quantize_static per-channel")


def mcnemar(ours, theirs) -> tuple[int, int, float]:
    """Exact McNemar test of two classifiers on the same images (boolean arrays: image right).

    Returns (images only ours gets right, images only theirs gets right, two-sided p): under
    "neither is better", each image on which they disagree is a fair coin flip."""
    import numpy as np

    b = int(np.count_nonzero(ours & ~theirs))
    c_ = int(np.count_nonzero(~ours & theirs))
    n, k = b + c_, min(b, c_)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    return b, c_, p


def score_model(name: str, test_npz: Path, scratch: Path, dropped: list[str],
                chosen: list[str]) -> tuple[dict[str, float], dict[str, float], dict]:
    """(top-1 per column, output SQNR against FP32 in dB per quantized column, per column the
    boolean array of the images it classifies right) on the 10k images."""
    import accuracy as acc  # bench/accuracy.py: the same evaluation and quantize_static calls
    import numpy as np

    from aimetcli import api
    from aimetcli.calibration.data import input_specs, open_data
    from aimetcli.kernels.quant import QuantScheme
    from aimetcli.quantsim.placement import QuantOptions

    path = c.SAMPLE_MODELS / f"{name}_fmnist.onnx"
    fp32, _ = api.load(str(path))
    ev = open_data(str(test_npz), input_specs(fp32), labels_key="label")
    calib = open_data(str(c.SAMPLE_MODELS / "calib.npz"), input_specs(fp32))
    reference = api.model_outputs(fp32, ev, batch_size=500)
    labels = np.load(test_npz)["label"]
    row = {"FP32": api.evaluate([fp32], ev, reference_outputs=reference).top1[0]}
    sqnr = {}
    right = {"FP32": np.argmax(reference[0], axis=1) == labels}

    def score(label: str, model) -> None:
        # the per-image verdicts behind the column's top-1 (simulations: optimizations off, as evaluate)
        right[label] = np.argmax(api.model_outputs(model, ev, batch_size=500)[0], axis=1) == labels
        assert abs(100 * right[label].mean() - row[label]) < 1e-9, (label, right[label].mean(), row[label])
    auto = api.scheme_candidates(QuantOptions())
    for label, opts, schemes in (("ptq per-tensor", QuantOptions(), auto),
                                 ("ptq per-tensor, min-max", QuantOptions(), ()),
                                 ("ptq per-tensor, tf-enhanced", QuantOptions(scheme=QuantScheme.TF_ENHANCED), ()),
                                 ("ptq per-channel", QuantOptions(per_channel=True), auto)):
        # api.ptq itself, scored on the 10k images (equalization and bias correction each kept only
        # where they raise the output SQNR against FP32 on the calibration data)
        outdir = scratch / f"{name}_{label}".replace(" ", "_").replace(",", "")
        summary = api.ptq(api.clone(fp32), calib, ev, opts, outdir=str(outdir), schemes=schemes)
        if summary.schemes_tried:
            chosen.append(f"{name}: {label}: {summary.options['scheme']} (calibration SQNR "
                          + ", ".join(f"{t['scheme']} {t['calib_sqnr_db']:.1f}" for t in summary.schemes_tried)
                          + " dB)")
        stages = {s.name: s for s in summary.stages}
        for key, what in (("+ equalize", "equalization"), ("+ bias-correct", "bias correction")):
            if key in stages and "not kept: " in stages[key].note:
                dropped.append(f"{name}: {label}: {what} dropped ({stages[key].note.split('not kept: ', 1)[1]})")
        row[label] = stages["+ bias-correct"].top1
        sqnr[label] = stages["+ bias-correct"].sqnr_db
        score(label, acc.load_plain(outdir / "sim.onnx"))
    for per_channel in (False, True):
        q, _, _ = acc.ort_quantize(path, calib, per_channel=per_channel, bw=8, scratch=scratch,
                                   tag=f"{name}_{per_channel}")
        label = f"quantize_static {'per-channel' if per_channel else 'per-tensor'}"
        res = api.evaluate([fp32, acc.load_plain(q)], ev,
                           run=api.RunOptions(batch_size=500), reference_outputs=reference)
        row[label], sqnr[label] = res.top1[1], res.comparisons[0].sqnr_db
        score(label, acc.load_plain(q))
    return row, sqnr, right


def main() -> int:
    import numpy as np

    if not (DATA_DIR / "t10k-images-idx3-ubyte.gz").exists():
        print(f"accuracy_10k: no Fashion-MNIST test set in {DATA_DIR} (apt install dataset-fashion-mnist); "
              "nothing written", file=sys.stderr)
        return 0
    import build  # sample_models/build.py: the same reading and normalisation as the committed sets

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aimetcli-10k-") as tmp:
        images, labels = build.load_split(DATA_DIR, "t10k")
        test_npz = Path(tmp) / "test10k.npz"
        np.savez(test_npz, input=build.normalise(images), label=labels)
        rows, sqnrs, rights, dropped, chosen = {}, {}, {}, [], []
        for name in MODELS:
            c.log(f"accuracy_10k: {name}")
            rows[name], sqnrs[name], rights[name] = score_model(name, test_npz, Path(tmp), dropped, chosen)
    table_rows, notes = [], []
    sqnr_rows = [[name, *(f"{sqnrs[name][k]:.1f}" for k in COLUMNS[1:])] for name in rows]
    for name, row in rows.items():
        fp = row["FP32"]
        table_rows.append([name, *(f"{row[k]:.2f}" if k == "FP32" else f"{row[k]:.2f} ({row[k] - fp:+.2f})"
                                   for k in COLUMNS)])
        for ours, theirs in (("ptq per-tensor", "quantize_static per-tensor"),
                             ("ptq per-tensor, min-max", "quantize_static per-tensor"),
                             ("ptq per-tensor, tf-enhanced", "quantize_static per-tensor"),
                             ("ptq per-channel", "quantize_static per-channel")):
            diff = round((row[ours] - row[theirs]) * 100)
            only_ours, only_theirs, p = mcnemar(rights[name][ours], rights[name][theirs])
            notes.append(f"{name}: {ours} vs {theirs}: {diff:+d} images of 10,000 (right only with ours "
                         f"{only_ours}, only with theirs {only_theirs}; McNemar p = {p:.2f})")
        for ours in ("ptq per-tensor", "ptq per-channel"):
            only_ours, only_fp, p = mcnemar(rights[name][ours], rights[name]["FP32"])
            notes.append(f"{name}: {ours} vs FP32: right only with the quantized model {only_ours}, "
                         f"only with FP32 {only_fp}; McNemar p = {p:.2f}")
    body = "\n".join([
        "W8A8 top-1 % (Δ points vs FP32) on all 10,000 Fashion-MNIST test images (one image = 0.01 points; "
        "the committed eval.npz holds the first 2,000). `python bench/accuracy_10k.py`; the same calls as "
        "bench/accuracy.py (ptq = api.ptq: fold-bn, equalize, hybrid bias correction, quantsim, range scheme "
        "min-max or tf-enhanced, whichever gives the higher calibration-data SQNR, unless the column names one; equalization "
        "and bias correction each kept only where they raise the calibration-data SQNR; calibration on "
        "sample_models/calib.npz); "
        "simulations scored with onnxruntime optimizations off. "
        f"Total {time.perf_counter() - start:.0f} s.\n",
        c.table(["model", *COLUMNS], table_rows),
        "\nOutput SQNR against FP32 (dB) on the same 10,000 images, a finer measure of how close each W8 model "
        "stays to FP32 than top-1:\n",
        c.table(["model", *COLUMNS[1:]], sqnr_rows),
        "\nOur W8 models against onnxruntime's, image by image. McNemar's exact test asks whether the images "
        "on which two models disagree split unevenly enough to show that one is better (p < 0.05 would say "
        "so; p near 1 means a coin flip would split them as evenly):\n",
        *(f"- {n}" for n in notes),
        "\nThe range scheme ptq chose (scheme auto, the default):\n",
        *(f"- {x}" for x in chosen),
        *(["\nWhere ptq dropped a technique:\n", *(f"- {d}" for d in dropped)] if dropped else []),
    ])
    c.write_section("accuracy_10k", "Accuracy at W8A8 on the full 10k test set", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
