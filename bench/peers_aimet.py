#!/usr/bin/env python3
"""AIMET-onnx 2.42 side by side with aimetcli and onnxruntime's quantize_static (issues #18, #19).

Every side is a whole process, run interleaved in one session: AIMET-onnx through
bench/aimet_driver.py in its own venv (/work/venv-aimet, made by bench/setup_aimet_peer.sh; never a
dependency of aimetcli), aimetcli through its CLI from this checkout (``python -m aimetcli`` with
PYTHONPATH set to the repository), quantize_static in a process of this venv (quant_pre_process +
quantize_static, QDQ, MinMax). Same models (sample_models/*.onnx), same calibration samples (the
first ``--num-samples`` of sample_models/calib.npz, batches of 32), same evaluation (all of
sample_models/eval.npz, top-1 on 'label', and the SQNR of the logits against the FP32 model's).
Every model is scored here the same way: one onnxruntime session with graph optimizations off over
the eval inputs (AIMET's sim is scored in its own process, with its custom-op session, and its
logits handed back). Both quantsims get the same AIMET config file: default_config.json for
per-tensor rows, default_config_per_channel.json for per-channel ones (AIMET 2.42's default alias
is the per-channel one).

Rows (``--rows``):
  a  W8A8 per-tensor, on the BN-folded model: AIMET QuantizationSimModel + compute_encodings,
     ``aimetcli quantsim``, quantize_static.
  b  W4A8 per-channel from the unfolded model: AIMET equalize_model (BN fold + CLE + high-bias
     fold) + quantsim; ``aimetcli fold-bn`` + ``equalize`` + ``quantsim`` (three processes,
     times summed); ``aimetcli ptq`` (--per-channel --param-bw 4, its own choices).
  c  AdaRound W4A8 per-channel on the folded model, the same iterations: AIMET apply_adaround +
     compute_encodings; ``aimetcli adaround`` + ``quantsim``.
  d  W4A8 per-channel on the folded model: AIMET apply_seq_mse + compute_encodings, AIMET plain
     quantsim, ``aimetcli quantsim``.
  e  W8A8 per-tensor sensitivity on the folded model: AIMET analyze_per_layer_sensitivity (eval_fn:
     SQNR of the logits on the first 64 eval samples) and ``aimetcli analyze`` (--samples 64 of the
     same eval data); times and the overlap of the five worst layers.
  f  W4 per-channel symmetric weight scales: AIMET's exported encodings (row d's plain quantsim)
     against aimetcli's, per channel.

Times are whole-process wall clock, medians over ``--repeats`` interleaved runs; for AIMET the time
to the end of its work (the driver's ``work_done_at``, interpreter start and imports included,
scoring and export not). Writes section ``peers-aimet`` of bench/RESULTS.md.

    python bench/peers_aimet.py [--models resnet,mobilenetv2] [--rows a,b,c] [--repeats 3]
                                [--iterations 100] [--adaround-models resnet] [--no-write]
                                [--keep-other-rows]

``--keep-other-rows`` reruns only ``--rows`` and splices them into the section as it is: every
other row (and model) stays as its earlier run wrote it, under a note naming both runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from common import RESULTS, SAMPLE_MODELS, fmt_s, log, machine, table, write_section  # noqa: E402

AIMET_PY = os.environ.get("AIMET_PYTHON", "/work/venv-aimet/bin/python")
DRIVER = BENCH / "aimet_driver.py"
CALIB = SAMPLE_MODELS / "calib.npz"
EVAL = SAMPLE_MODELS / "eval.npz"
BATCH = 32
TOP = 5


# ---------------------------------------------------------------------------- running the sides
@dataclass
class Run:
    seconds: float  # whole process (AIMET: up to the end of its work)
    cpu: float = 0.0  # the process's user + system CPU seconds (AIMET: up to the end of its work)
    logits: Path | None = None  # AIMET's sim logits on the eval inputs
    info: dict = field(default_factory=dict)
    error: str = ""


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def ours(*args: str) -> Run:
    """``python -m aimetcli ARGS`` from this checkout, timed whole."""
    c, t = _children_cpu(), time.time()
    p = subprocess.run([sys.executable, "-m", "aimetcli", *args, "-q"], env=_env(), capture_output=True, text=True)
    dt = time.time() - t
    if p.returncode != 0:
        return Run(dt, error=(p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1])
    return Run(dt, _children_cpu() - c)


def aimet(job: dict, out: Path) -> Run:
    """One AIMET job (bench/aimet_driver.py) in the AIMET venv; time to its work_done_at."""
    out.mkdir(parents=True, exist_ok=True)
    job = {"calib": str(CALIB), "eval": str(EVAL), "batch_size": BATCH, "act_bw": 8, "fold": False, **job,
           "out": str(out)}
    (out / "job.json").write_text(json.dumps(job))
    t = time.time()
    p = subprocess.run([AIMET_PY, str(DRIVER), str(out / "job.json")], capture_output=True, text=True)
    dt = time.time() - t
    (out / "stderr.log").write_text(p.stderr)
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
        return Run(dt, error=lines[-1] if lines else f"exit {p.returncode}")
    info = json.loads(p.stdout.strip().splitlines()[-1])
    return Run(info["work_done_at"] - t, info["cpu_at_work_done"], logits=out / "logits.npy", info=info)


_ORT_SCRIPT = """
import contextlib, io, sys
import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
src, pre, dst, calib, n, per_channel = sys.argv[1:7]
x = np.load(calib)["input"][:int(n)].astype(np.float32)
class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter([{"input": x[i:i + 32]} for i in range(0, len(x), 32)])
    def get_next(self):
        return next(self.it, None)
with contextlib.redirect_stdout(io.StringIO()):
    quant_pre_process(src, pre)
quantize_static(pre, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel == "1",
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax)
"""


def ort_static(src: Path, dst: Path, n: int, per_channel: bool = False) -> Run:
    c, t = _children_cpu(), time.time()
    p = subprocess.run([sys.executable, "-c", _ORT_SCRIPT, str(src), str(dst.with_suffix(".pre.onnx")), str(dst),
                        str(CALIB), str(n), "1" if per_channel else "0"], capture_output=True, text=True)
    dt = time.time() - t
    if p.returncode != 0:
        return Run(dt, error=(p.stderr.strip().splitlines() or ["?"])[-1])
    return Run(dt, _children_cpu() - c)


# ---------------------------------------------------------------------------- scoring
_EVAL: dict = {}


def eval_data() -> tuple[np.ndarray, np.ndarray]:
    if not _EVAL:
        d = np.load(EVAL)
        _EVAL["x"], _EVAL["y"] = d["input"].astype(np.float32), d["label"]
    return _EVAL["x"], _EVAL["y"]


def model_logits(path: Path) -> np.ndarray:
    """The model's first output on every eval input, onnxruntime with graph optimizations off."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x, _ = eval_data()
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 250]})[0] for i in range(0, len(x), 250)])


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    noise = float(np.sum((ref - out) ** 2))
    return float("inf") if noise == 0 else 10 * float(np.log10(np.sum(ref ** 2) / noise))


@dataclass
class Score:
    top1: float
    sqnr: float


def score(logits: np.ndarray, fp32: np.ndarray) -> Score:
    _, y = eval_data()
    return Score(100.0 * float(np.mean(np.argmax(logits, axis=1) == y)), sqnr_db(fp32, logits))


# ---------------------------------------------------------------------------- one table row
@dataclass
class Cell:
    """One tool's side of a row: its times over the repeats and the score of its last run."""

    label: str
    times: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    score: Score | None = None
    error: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    @property
    def cpu(self) -> float | None:
        return statistics.median(self.cpus) if self.cpus else None


def interleave(sides: list[tuple[Cell, object]], repeats: int) -> None:
    """Run each side's callable ``repeats`` times, interleaved (A B C A B C ...). A callable returns
    (wall seconds, CPU seconds, Score | None, error, extra)."""
    for r in range(repeats):
        for cell, fn in sides:
            if cell.error:
                continue
            seconds, cpu, sc, err, extra = fn()  # type: ignore[operator]
            if err:
                cell.error = err
                log(f"  {cell.label}: FAILED {err}")
                continue
            cell.times.append(seconds)
            cell.cpus.append(cpu)
            cell.score = sc or cell.score
            cell.extra.update(extra)
            log(f"  {cell.label} [{r + 1}/{repeats}]: {seconds:.2f} s wall, {cpu:.2f} s CPU"
                + (f", top-1 {sc.top1:.2f}%, SQNR {sc.sqnr:.1f} dB" if sc else ""))


# ---------------------------------------------------------------------------- the bench
class Bench:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args = args
        self.work = work
        self.n = args.num_samples
        self.cfg = aimet_config_dir()
        self.pt_cfg = str(self.cfg / "default_config.json")
        self.pc_cfg = str(self.cfg / "default_config_per_channel.json")
        self.pt_ours, self.pc_ours = (ours_config(Path(c), work) for c in (self.pt_cfg, self.pc_cfg))
        self.sections: list[str] = []
        self.fp32: dict[str, np.ndarray] = {}
        self.fp32_top1: dict[str, float] = {}

    # paths
    def raw(self, m: str) -> Path:
        return SAMPLE_MODELS / f"{m}_fmnist.onnx"

    def folded(self, m: str) -> Path:
        dst = self.work / f"{m}_folded.onnx"
        if not dst.exists():
            r = ours("fold-bn", str(self.raw(m)), "-o", str(dst))
            if r.error:
                raise SystemExit(f"fold-bn {m}: {r.error}")
        return dst

    def ref(self, m: str) -> np.ndarray:
        if m not in self.fp32:
            self.fp32[m] = model_logits(self.raw(m))
            self.fp32_top1[m] = score(self.fp32[m], self.fp32[m]).top1
        return self.fp32[m]

    def tmp(self, *parts: str) -> Path:
        p = self.work.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    # sides
    def aimet_side(self, m: str, tag: str, job: dict):
        def fn():
            r = aimet(job, self.tmp(m, tag, "aimet"))
            if r.error:
                return 0.0, 0.0, None, r.error, {}
            return r.seconds, r.cpu, score(np.load(r.logits), self.ref(m)), "", {"info": r.info}
        return fn

    def ours_side(self, m: str, steps: list[list[str]], scored: Path | None):
        """Several aimetcli processes in turn (times summed); ``scored`` is the model scored (None: none)."""
        def fn():
            total = cpu = 0.0
            for step in steps:
                r = ours(*step)
                if r.error:
                    return 0.0, 0.0, None, f"{step[0]}: {r.error}", {}
                total += r.seconds
                cpu += r.cpu
            return total, cpu, None if scored is None else score(model_logits(scored), self.ref(m)), "", {}
        return fn

    def quantsim(self, src: Path, dst: Path, *opts: str) -> list[str]:
        return ["quantsim", str(src), "-o", str(dst), "--data", str(CALIB), "--num-samples", str(self.n), *opts]

    # rows
    def row_a(self, m: str) -> list[Cell]:
        f = self.folded(m)
        sim, qs = self.tmp(m, "a", "ours_sim.onnx"), self.tmp(m, "a", "ort_qdq.onnx")
        cells = [Cell("AIMET QuantizationSimModel + compute_encodings"), Cell("aimetcli quantsim"),
                 Cell("onnxruntime quantize_static")]

        def ort_fn():
            r = ort_static(f, qs, self.n)
            if r.error:
                return 0.0, 0.0, None, r.error, {}
            return r.seconds, r.cpu, score(model_logits(qs), self.ref(m)), "", {}

        interleave([
            (cells[0], self.aimet_side(m, "a", {"task": "quantsim", "model": str(f), "config": self.pt_cfg,
                                                "param_bw": 8, "num_samples": self.n})),
            (cells[1], self.ours_side(m, [self.quantsim(f, sim, "--config", self.pt_ours)], sim)),
            (cells[2], ort_fn),
        ], self.args.repeats)
        return cells

    def row_b(self, m: str) -> list[Cell]:
        raw = self.raw(m)
        fo, eq, sim = (self.tmp(m, "b", n) for n in ("folded.onnx", "eq.onnx", "sim.onnx"))
        ptq_dir = self.tmp(m, "b", "ptq")
        cells = [Cell("AIMET equalize_model + quantsim"), Cell("aimetcli fold-bn + equalize + quantsim"),
                 Cell("aimetcli ptq --per-channel")]
        interleave([
            (cells[0], self.aimet_side(m, "b", {"task": "cle_quantsim", "model": str(raw), "config": self.pc_cfg,
                                                "param_bw": 4, "num_samples": self.n})),
            (cells[1], self.ours_side(m, [["fold-bn", str(raw), "-o", str(fo)], ["equalize", str(fo), "-o", str(eq)],
                                          self.quantsim(eq, sim, "--param-bw", "4", "--config", self.pc_ours)], sim)),
            (cells[2], self.ours_side(m, [["ptq", str(raw), "-o", str(ptq_dir), "--data", str(CALIB), "--num-samples",
                                           str(self.n), "--param-bw", "4", "--per-channel"]], ptq_dir / "sim.onnx")),
        ], self.args.repeats)
        return cells

    def row_c(self, m: str) -> list[Cell]:
        f = self.folded(m)
        it = str(self.args.iterations)
        ar, sim = self.tmp(m, "c", "ar.onnx"), self.tmp(m, "c", "sim.onnx")
        cells = [Cell(f"AIMET apply_adaround ({it} it.) + compute_encodings"),
                 Cell(f"aimetcli adaround ({it} it.) + quantsim")]
        interleave([
            (cells[0], self.aimet_side(m, "c", {"task": "adaround", "model": str(f), "config": self.pc_cfg,
                                                "param_bw": 4, "num_samples": self.n,
                                                "iterations": self.args.iterations})),
            (cells[1], self.ours_side(m, [["adaround", str(f), "-o", str(ar), "--data", str(CALIB), "--num-samples",
                                           str(self.n), "--param-bw", "4", "--config", self.pc_ours, "--iterations",
                                           it],
                                          self.quantsim(ar, sim, "--param-bw", "4", "--config", self.pc_ours)], sim)),
        ], self.args.adaround_repeats)
        return cells

    def row_d(self, m: str, seqmse: bool) -> list[Cell]:
        f = self.folded(m)
        sim = self.tmp(m, "d", "ours_sim.onnx")
        job = {"model": str(f), "config": self.pc_cfg, "param_bw": 4, "num_samples": self.n}
        seq, plain, mine = (Cell("AIMET apply_seq_mse + compute_encodings"), Cell("AIMET quantsim (no SeqMSE)"),
                            Cell("aimetcli quantsim"))
        if seqmse:
            interleave([(seq, self.aimet_side(m, "d_seqmse", {"task": "seqmse", **job}))], self.args.seqmse_repeats)
        interleave([
            (plain, self.aimet_side(m, "d_plain", {"task": "quantsim", **job})),
            (mine, self.ours_side(m, [self.quantsim(f, sim, "--param-bw", "4", "--config", self.pc_ours)], sim)),
        ], self.args.repeats)
        return [seq, plain, mine] if seqmse else [plain, mine]

    def row_e(self, m: str) -> tuple[list[Cell], dict]:
        f = self.folded(m)
        out = self.tmp(m, "e", "ours")
        cells = [Cell("AIMET analyze_per_layer_sensitivity (+ sim, compute_encodings)"), Cell("aimetcli analyze")]
        interleave([
            (cells[0], self.aimet_side(m, "e", {"task": "analyze", "model": str(f), "config": self.pt_cfg,
                                                "param_bw": 8, "num_samples": self.n, "analyze_samples": 64})),
            (cells[1], self.ours_side(m, [["analyze", str(f), "-o", str(out), "--data", str(CALIB), "--num-samples",
                                           str(self.n), "--eval", str(EVAL), "--samples", "64", "--config",
                                           self.pt_ours]], None)),
        ], self.args.repeats)
        ranking = {}
        if not cells[0].error and not cells[1].error:
            ranking = compare_rankings(cells[0].extra["info"]["sensitivity"], out / "report.json")
        return cells, ranking


# ---------------------------------------------------------------------------- rows e and f: comparisons
def _combined_db(sqnrs: list[float]) -> float:
    """The SQNR of independent noises added together (noise powers relative to the signal sum)."""
    return -10 * float(np.log10(sum(10 ** (-s / 10) for s in sqnrs)))


def compare_rankings(aimet_scores: dict[str, float], report: Path) -> dict:
    """Five worst layers by AIMET (lowest SQNR with only the layer's quantizers on) and by aimetcli
    (its per-quantizer 'only this on' SQNRs, grouped by the node they belong to and added as
    independent noises)."""
    doc = json.loads(report.read_text())
    per_node: dict[str, list[float]] = {}
    for q in doc["quantizers"]:
        per_node.setdefault(q["node"], []).append(q["only_sqnr_db"])
    ours_scores = {n: _combined_db(v) for n, v in per_node.items()}
    a = [n for n, _ in sorted(aimet_scores.items(), key=lambda kv: kv[1])[:TOP]]
    o = [n for n, _ in sorted(ours_scores.items(), key=lambda kv: kv[1])[:TOP]]
    return {"aimet": [(n, aimet_scores[n]) for n in a], "ours": [(n, ours_scores[n]) for n in o],
            "overlap": len(set(a) & set(o)), "aimet_layers": len(aimet_scores), "ours_layers": len(ours_scores)}


def compare_scales(aimet_enc: Path, ours_enc: Path) -> dict:
    """Per-channel weight scales of the same weights in AIMET's and aimetcli's 1.0.0 encodings."""
    def params(path: Path) -> dict[str, np.ndarray]:
        doc = json.loads(path.read_text())
        return {e["name"]: np.asarray(e["scale"], dtype=np.float64) for e in doc["param_encodings"]}

    a, o = params(aimet_enc), params(ours_enc)
    common_names = sorted(set(a) & set(o))
    total = differ = 0
    ratios: list[np.ndarray] = []
    for name in common_names:
        if a[name].shape != o[name].shape:
            continue
        r = o[name] / a[name]
        total += r.size
        differ += int(np.sum(np.abs(r - 1) > 1e-6))
        ratios.append(r)
    allr = np.concatenate(ratios) if ratios else np.ones(1)
    return {"weights": len(common_names), "only_aimet": sorted(set(a) - set(o)), "only_ours": sorted(set(o) - set(a)),
            "channels": total, "differ": differ, "ratio_min": float(allr.min()), "ratio_max": float(allr.max()),
            "ratio_median_of_differing": float(np.median(allr[np.abs(allr - 1) > 1e-6])) if differ else 1.0}


# ---------------------------------------------------------------------------- setup and report
def ours_config(src: Path, work: Path) -> str:
    """AIMET's config file for aimetcli: a copy without 'supergroup_pass_list' (AIMET 2.42's files carry
    ["MatmulAdd"], which aimetcli's config reader rejects as an unknown key; no sample model has a MatMul)."""
    doc = json.loads(src.read_text())
    doc.pop("supergroup_pass_list", None)
    dst = work / f"ours_{src.name}"
    dst.write_text(json.dumps(doc, indent=1))
    return str(dst)


def aimet_config_dir() -> Path:
    p = subprocess.run([AIMET_PY, "-c", "import os, aimet_onnx.common.quantsim_config as m; "
                        "print(os.path.dirname(m.__file__))"], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"AIMET-onnx not importable from {AIMET_PY}: run bench/setup_aimet_peer.sh "
                         f"({(p.stderr.strip().splitlines() or ['?'])[-1]})")
    return Path(p.stdout.strip())


def cell_rows(cells: list[Cell], fp32_top1: float, base: Cell | None = None) -> list[list[str]]:
    """Table rows: wall and CPU medians, both as multiples of ``base``'s, top-1 and SQNR."""
    rows = []
    for c in cells:
        if c.error:
            rows.append([c.label, "failed: " + c.error.replace("|", "/")[:200], "", "", "", "", ""])
            continue
        t, cpu, sc = c.median, c.cpu, c.score
        ok = base is not None and base.median and base.cpu
        rows.append([c.label, fmt_s(t) + f" ({len(c.times)} run{'s' if len(c.times) != 1 else ''})", fmt_s(cpu),
                     f"{t / base.median:.2f}x" if ok and t is not None else "-",  # type: ignore[union-attr]
                     f"{cpu / base.cpu:.2f}x" if ok and cpu is not None else "-",  # type: ignore[union-attr]
                     "-" if sc is None else f"{sc.top1:.2f} ({sc.top1 - fp32_top1:+.2f})",
                     "-" if sc is None else f"{sc.sqnr:.1f}"])
    return rows


HEAD = ["side", "wall (median)", "CPU user+sys (median)", "wall / aimetcli", "CPU / aimetcli", "top-1 % (vs FP32)",
        "SQNR dB"]


def base_of(cells: list[Cell], label: str) -> Cell | None:
    return next((c for c in cells if c.label.startswith(label) and not c.error), None)


def stage_note(cell: Cell, stage: str) -> str:
    if cell.error or "info" not in cell.extra:
        return ""
    st = cell.extra["info"]["stages"]
    return (f"AIMET's {stage} call alone (last run, in-process): {fmt_s(st[stage])}; the process's imports "
            f"{fmt_s(st['imports'])}.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="resnet,mobilenetv2,shufflenetv2")
    ap.add_argument("--rows", default="a,b,c,d,e,f")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--adaround-models", default="resnet")
    ap.add_argument("--adaround-repeats", type=int, default=1)
    ap.add_argument("--seqmse-models", default="resnet")
    ap.add_argument("--seqmse-repeats", type=int, default=1)
    ap.add_argument("--num-samples", type=int, default=500)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--keep-other-rows", action="store_true",
                    help="rerun only --rows; keep every other row and model of the section as it is")
    args = ap.parse_args(argv)
    args.earlier = current_section() if args.keep_other_rows else None
    models = [m for m in args.models.split(",") if m]
    rows = set(args.rows.split(","))
    up0 = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="peers-aimet-"))
    b = Bench(args, work)
    out: list[str] = []
    for m in models:
        log(f"== {m}")
        b.ref(m)
        fp = b.fp32_top1[m]
        out.append(f"### {m} (FP32 top-1 {fp:.2f}%)")

        if "a" in rows:
            log(" row a: W8A8 per-tensor")
            cells = b.row_a(m)
            out += ["", "a. W8A8 per-tensor, BN-folded model (default_config.json):", "",
                    table(HEAD, cell_rows(cells, fp, base_of(cells, "aimetcli quantsim")))]
        if "b" in rows:
            log(" row b: W4A8 per-channel, fold + CLE")
            cells = b.row_b(m)
            out += ["", "b. W4A8 per-channel from the model with BN (default_config_per_channel.json):", "",
                    table(HEAD, cell_rows(cells, fp, base_of(cells, "aimetcli fold-bn")))]
        if "c" in rows and m in args.adaround_models.split(","):
            log(f" row c: AdaRound {args.iterations} iterations")
            cells = b.row_c(m)
            out += ["", f"c. AdaRound W4A8 per-channel, {args.iterations} iterations per layer, BN-folded model:",
                    "", table(HEAD, cell_rows(cells, fp, base_of(cells, "aimetcli adaround")))]
            out += ["", stage_note(cells[0], "apply_adaround")]
        if "d" in rows:
            seqmse = m in args.seqmse_models.split(",")
            log(" row d: W4A8 per-channel" + (" and SeqMSE" if seqmse else ""))
            cells_d = b.row_d(m, seqmse)
            out += ["", "d. W4A8 per-channel, BN-folded model" + (": AIMET SeqMSE (20 candidates) next to plain "
                    "quantsim:" if seqmse else " (no SeqMSE row for this model):"), "",
                    table(HEAD, cell_rows(cells_d, fp, base_of(cells_d, "aimetcli quantsim")))]
            if seqmse:
                out += ["", stage_note(cells_d[0], "apply_seq_mse")]
            if "f" in rows and not cells_d[-2].error and not cells_d[-1].error:
                cmp = compare_scales(work / m / "d_plain" / "aimet" / "aimet.encodings",
                                     b.tmp(m, "d", "ours_sim.encodings"))
                out += ["", f"f. W4 per-channel symmetric weight scales, AIMET's exported encodings (plain quantsim "
                        f"above) against aimetcli's: {cmp['differ']} of {cmp['channels']} channels differ over "
                        f"{cmp['weights']} weights; aimetcli/AIMET scale ratio {cmp['ratio_min']:.4f} to "
                        f"{cmp['ratio_max']:.4f}, median of the differing {cmp['ratio_median_of_differing']:.4f}"
                        + (f"; weights only AIMET quantizes: {', '.join(cmp['only_aimet'])}" if cmp['only_aimet']
                           else "")
                        + (f"; only aimetcli: {', '.join(cmp['only_ours'])}" if cmp['only_ours'] else "") + "."]
        if "e" in rows:
            log(" row e: per-layer sensitivity")
            cells, ranking = b.row_e(m)
            out += ["", "e. W8A8 per-tensor per-layer sensitivity, BN-folded model, 64 eval samples:", "",
                    table(HEAD[:5], [r[:5] for r in cell_rows(cells, fp, base_of(cells, "aimetcli analyze"))]),
                    "", stage_note(cells[0], "analyze_per_layer_sensitivity")]
            if ranking:
                fmt = "; ".join
                out += ["", f"Five worst layers (SQNR dB with only that layer's quantizers on) - AIMET: "
                        f"{fmt(f'{n} {v:.1f}' for n, v in ranking['aimet'])}; aimetcli: "
                        f"{fmt(f'{n} {v:.1f}' for n, v in ranking['ours'])}; overlap {ranking['overlap']} of {TOP} "
                        f"({ranking['aimet_layers']} layers scored by AIMET, {ranking['ours_layers']} nodes with "
                        f"quantizers by aimetcli)."]
        out.append("")
        log(f" load average now {os.getloadavg()[0]:.1f}")
        out.append(f"(load average {os.getloadavg()[0]:.1f} after {m})")
        out.append("")
        report(args, out, up0)
    return 0


def report(args: argparse.Namespace, out: list[str], up0: tuple[float, float, float]) -> None:
    """The section so far (rewritten after every model, so a long run leaves its finished models)."""
    up1 = os.getloadavg()
    settings = (f"Settings: calibration = first {args.num_samples} samples of sample_models/calib.npz in batches of "
                f"{BATCH}; evaluation = all of sample_models/eval.npz (top-1 on 'label'; SQNR of the logits against "
                f"the FP32 model), every model scored by one onnxruntime session with graph optimizations off "
                f"(AIMET's sim in its own process with its custom ops); min-max ranges, weights symmetric, "
                f"activations asymmetric; the same AIMET config file for both quantsims (aimetcli gets a copy without the top-level "
                f"'supergroup_pass_list', which it rejects as unknown; it lists only MatmulAdd and the sample models "
                f"have no MatMul); AdaRound {args.iterations} iterations per layer on {args.adaround_models}, SeqMSE "
                f"on {args.seqmse_models}; times are whole processes "
                f"(AIMET: to the end of its work, imports included), medians of {args.repeats} interleaved runs "
                f"unless the row says otherwise. AIMET-onnx 2.42.0 with torch 2.13.0+cpu (bench/setup_aimet_peer.sh)"
                f". Load average {up0[0]:.1f} at the start, {up1[0]:.1f} at the end (2 cores shared with other "
                f"sessions: compare ratios, not seconds).")
    text = settings + "\n\n" + "\n".join(out)
    if args.earlier is not None:
        text = splice(args.earlier, "\n".join(out), set(args.rows.split(",")),
                      f"Rows {args.rows} rerun with --keep-other-rows by the run stamped above ({args.repeats} "
                      f"interleaved runs each; load average {up0[0]:.1f} at its start, {up1[0]:.1f} at its end); "
                      f"every other row from the earlier run")
    print(text)
    if not args.no_write:
        write_section("peers-aimet", "AIMET-onnx 2.42 side by side (peers_aimet.py)", text,
                      machine_info=machine())


# ---------------------------------------------------------------------------- rerunning some rows
_ROW = re.compile(r"^([a-z])\. ")
SECTION = "peers-aimet"


def current_section() -> str:
    """The body of section ``peers-aimet`` as RESULTS.md has it now (its stamp line kept, as the
    earlier run's), or "" when there is none."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    m = re.search(rf"<!-- {SECTION}:start -->\n## [^\n]*\n\n(.*?)\n<!-- {SECTION}:end -->", text, re.S)
    if not m:
        return ""
    body = m.group(1)
    body = re.sub(r"^_(.*?)\._\n\n", r"Earlier run: \1.\n\n", body, count=1)
    return re.sub(r"\n*Rows [a-z,]+ rerun with --keep-other-rows[^\n]*\n", "\n", body)


def _models(text: str) -> tuple[str, list[tuple[str, list[str]]]]:
    """(preamble, [(model, lines)]) of a section body: a model's lines run from its ``### model``
    header to the next."""
    pre, models = [], []
    for line in text.split("\n"):
        if line.startswith("### "):
            models.append((line.split()[1], [line]))
        elif models:
            models[-1][1].append(line)
        else:
            pre.append(line)
    return "\n".join(pre), models


def _chunks(lines: list[str]) -> tuple[list[str], list[tuple[str, list[str]]], list[str]]:
    """(head, [(row letter, lines)], tail) of one model's lines: a row runs from its ``x. `` line
    to the next row or the ``(load average`` line that starts the tail."""
    head, rows, tail = [], [], []
    for line in lines:
        m = _ROW.match(line)
        if tail or line.startswith("(load average"):
            tail.append(line)
        elif m:
            rows.append((m.group(1), [line]))
        elif rows:
            rows[-1][1].append(line)
        else:
            head.append(line)
    return head, rows, tail


def splice(earlier: str, fresh: str, rerun: set[str], note: str) -> str:
    """``earlier`` (a section body) with the rows ``rerun`` of each model replaced by ``fresh``'s
    (a model or a row it lacks is added), under ``note``."""
    pre, old = _models(earlier)
    _, new = _models(fresh)
    merged = dict(old)
    for model, lines in new:
        if model not in merged:
            merged[model] = lines
            continue
        head, rows, tail = _chunks(merged[model])
        _, fresh_rows, fresh_tail = _chunks(lines)
        by_row = {r: c for r, c in fresh_rows if r in rerun}
        kept = [(r, by_row.pop(r) if r in by_row else c) for r, c in rows]
        kept += list(by_row.items())
        stamp = [ln for ln in fresh_tail if ln.startswith("(load average")]
        tail = [ln for ln in tail if ln.strip()] + [f"{stamp[0][:-1]}, rows {','.join(sorted(rerun))} rerun)"
                                                     if stamp else ""]
        merged[model] = head + [ln for _, c in kept for ln in c] + tail + [""]
    blocks = "\n".join("\n".join(lines).rstrip("\n") + "\n" for lines in merged.values())
    return note + ".\n\n" + pre.strip() + "\n\n" + blocks


if __name__ == "__main__":
    sys.exit(main())
