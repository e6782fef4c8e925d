#!/usr/bin/env python3
"""Speed of the graph rewrites: fold-bn and equalize, against the load+save floor.

For each sample model (sample_models/*.onnx, when built) and the full-size
MobileNetV2 (bench/make_mobilenetv2.py, built when missing):

* floor: ``onnx.load`` + ``onnx.save`` of the file, in process;
* fold-bn: ``api.load`` (parse, onnx.checker, onnx-ir) + prepare + ``api.fold_bn`` +
  ``model_io.save_model``, in process, with the time of each stage;
* equalize: the same with ``api.equalize`` (which folds BN itself);
* the first run of the floor and of fold-bn in a fresh process (after the imports):
  the CLI's situation. Nothing is warm there: no freed memory to reuse (repeated
  runs in one process reuse it, more or less depending on what ran before, which
  moves the floor of the full-size model between ~20 and ~45 ms), and onnx sets up
  its operator schemas on the first onnx.checker call (~20 ms, most of a small
  model's first load);
* the ``aimetcli fold-bn`` / ``aimetcli equalize`` commands as whole processes, next
  to a process floor (a fresh ``python -c`` doing onnx.load + onnx.save) and the
  CLI's start-up (``aimetcli --version``);
* the peak RSS of the ``aimetcli equalize`` process against the model's size.

Goal (issues): fold-bn and equalize within 3x the load+save floor.
Run: ``python bench/bench_rewrites.py`` (writes the ``rewrites`` section of RESULTS.md).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402

GOAL = 3.0
FLOOR_SCRIPT = "import onnx, sys; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])"


def _floor(src: str, dest: str) -> dict[str, float]:
    import onnx

    t0 = time.perf_counter()
    onnx.save(onnx.load(src), dest)
    return {"total": time.perf_counter() - t0}


def _ir_floor(src: str, dest: str) -> dict[str, float]:
    """The floor of any pass written on onnx-ir (the IR the project mandates): load, convert to
    onnx-ir and back, save; no check, no shape inference, no pass."""
    import onnx
    import onnx_ir as ir

    t0 = time.perf_counter()
    onnx.save(ir.serde.serialize_model(ir.serde.deserialize_model(onnx.load(src))), dest)
    return {"total": time.perf_counter() - t0}


def _rewrite(src: str, dest: str, step: str) -> dict[str, float]:
    from aimetcli import api, model_io

    t0 = time.perf_counter()
    loaded = model_io.load_model(src)
    t1 = time.perf_counter()
    model, _ = api.prepare(loaded.model)
    t2 = time.perf_counter()
    if step == "fold":
        api.fold_bn(model)
    else:
        api.equalize(model)
    t3 = time.perf_counter()
    model_io.save_model(model, dest)
    t4 = time.perf_counter()
    return {"load": t1 - t0, "prepare": t2 - t1, "step": t3 - t2, "save": t4 - t3, "total": t4 - t0}


def first_run_child(src: str, dest: str, step: str) -> dict[str, float]:
    """One floor or rewrite in this (fresh) process, imports done first and not timed."""
    import onnx  # noqa: F401

    from aimetcli import api, model_io  # noqa: F401
    from aimetcli.passes import fold_batchnorm  # noqa: F401

    return _floor(src, dest) if step == "floor" else _rewrite(src, dest, step)


def bench_model(path: Path, n_inproc: int, n_proc: int) -> dict:
    tmp = c.scratch_dir()
    out = str(tmp / "out.onnx")
    src = str(path)
    res: dict = {"model": path.stem, "bytes": path.stat().st_size}
    # one untimed run of each warms the page cache and the imports
    _floor(src, out), _rewrite(src, out, "fold"), _rewrite(src, out, "equalize")
    # interleaved (floor, fold, equalize) rounds: the machine's load drifts, each round sees the same
    def one_round() -> dict[str, float]:
        row = {"floor": _floor(src, out)["total"], "ir_floor": _ir_floor(src, out)["total"]}
        row.update({f"fold.{k}": v for k, v in _rewrite(src, out, "fold").items()})
        row.update({f"equalize.{k}": v for k, v in _rewrite(src, out, "equalize").items()})
        return row

    rounds = c.repeat(one_round, n_inproc)
    res["floor"] = rounds["floor"]
    res["ir_floor"] = rounds["ir_floor"]
    for step in ("fold", "equalize"):
        res[step] = {k.split(".", 1)[1]: t for k, t in rounds.items() if k.startswith(step + ".")}
    first: dict[str, list[float]] = {}
    for _ in range(n_proc):  # interleaved, like the rounds above
        first.setdefault("floor", []).append(c.in_child(first_run_child, src, out, "floor")[0]["total"])
        for k, v in c.in_child(first_run_child, src, out, "fold")[0].items():
            first.setdefault(k, []).append(v)
    res["first"] = {k: c.Timing(v) for k, v in first.items()}
    res["proc_floor"], res["proc_floor_rss"] = c.time_process([c.PYTHON, "-c", FLOOR_SCRIPT, src, out], n_proc)
    res["cli_fold"], res["cli_fold_rss"] = c.time_process([c.AIMETCLI, "-q", "fold-bn", src, "-o", out], n_proc)
    res["cli_eq"], res["cli_eq_rss"] = c.time_process([c.AIMETCLI, "-q", "equalize", src, "-o", out], n_proc)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return res


def report(results: list[dict], startup: c.Timing, startup_rss: int) -> str:
    rows, stages, firsts, procs = [], [], [], []
    verdicts = []
    for r in results:
        floor = r["floor"].median
        fold, eq = r["fold"]["total"].median, r["equalize"]["total"].median
        irf = r["ir_floor"].median
        rows.append([r["model"], c.fmt_mb(r["bytes"]), c.fmt_s(floor), c.fmt_s(irf), c.fmt_x(irf / floor),
                     c.fmt_s(fold), c.fmt_x(fold / floor), c.fmt_s(eq), c.fmt_x(eq / floor)])
        verdicts.append((r["model"], fold / floor, eq / floor))
        for step in ("fold", "equalize"):
            t = r[step]
            stages.append([r["model"], "fold-bn" if step == "fold" else "equalize",
                           *(c.fmt_s(t[k].median) for k in ("load", "prepare", "step", "save", "total"))])
        f = r["first"]
        firsts.append([r["model"], c.fmt_s(f["floor"].median), c.fmt_s(f["total"].median),
                       c.fmt_x(f["total"].median / f["floor"].median),
                       *(c.fmt_s(f[k].median) for k in ("load", "prepare", "step", "save"))])
        pf = r["proc_floor"].median
        procs.append([r["model"], c.fmt_s(pf),
                      c.fmt_s(r["cli_fold"].median), c.fmt_x(r["cli_fold"].median / pf),
                      c.fmt_s(r["cli_eq"].median), c.fmt_x(r["cli_eq"].median / pf),
                      c.fmt_mb(r["proc_floor_rss"]), c.fmt_mb(r["cli_eq_rss"]),
                      c.fmt_x(r["cli_eq_rss"] / r["bytes"]),
                      c.fmt_x(max(0, r["cli_eq_rss"] - startup_rss) / r["bytes"])])
    parts = [
        "In process (median; the floor is `onnx.load` + `onnx.save` of the same file; "
        f"goal: within {GOAL:.0f}x the floor). 'onnx-ir round trip' is the same load and save with the "
        "conversion to onnx-ir and back between them, which any pass written on onnx-ir (as the project "
        "requires) pays before doing anything: on the small sample models it alone is over the goal.\n",
        c.table(["model", "size", "load+save floor", "onnx-ir round trip", "x floor", "fold-bn", "x floor",
                 "equalize", "x floor"], rows),
        "\nGoal check: " + "; ".join(
            f"{m}: fold-bn {c.verdict(f, GOAL)} ({f:.1f}x), equalize {c.verdict(e, GOAL)} ({e:.1f}x)"
            for m, f, e in verdicts) + ".",
        "\nWhere the time goes (median of each stage; load = read + onnx.checker + onnx-ir, prepare = lift "
        "constants + shape inference, save = serialize + atomic write):\n",
        c.table(["model", "command", "load", "prepare", "fold/equalize", "save", "total"], stages),
        "\nFirst run in a fresh process (after the imports; nothing warm, as in the CLI; median of "
        f"{len(results[0]['first']['floor'].samples) if results else 0} processes each):\n",
        c.table(["model", "load+save floor", "fold-bn", "x floor", "load", "prepare", "fold", "save"], firsts),
        "\nWhole processes (the process floor is a fresh `python -c` doing onnx.load + onnx.save; RSS = peak "
        f"resident set of the process). The CLI's start-up alone (`aimetcli --version`) takes "
        f"{c.fmt_s(startup.median)} and {c.fmt_mb(startup_rss)}.\n",
        c.table(["model", "process floor", "aimetcli fold-bn", "x", "aimetcli equalize", "x",
                 "floor peak RSS", "equalize peak RSS", "RSS / model size", "(RSS - start-up) / model size"],
                procs),
    ]
    full = next((r for r in results if r["model"] == c.MOBILENETV2.stem), None)
    if full is not None:
        ref = c.AIMET_REF
        parts += [
            "\nFull-size MobileNetV2 against AIMET-ONNX 2.42 (in process, same machines):\n",
            c.table(["step", "AIMET-ONNX", "aimetcli", "aimetcli / AIMET"], [
                ["onnx.load + onnx.save", c.fmt_s(ref["load_save"]), c.fmt_s(full["floor"].median),
                 c.fmt_x(full["floor"].median / ref["load_save"])],
                ["fold BN (load + fold + save)", c.fmt_s(ref["fold"]), c.fmt_s(full["fold"]["total"].median),
                 c.fmt_x(full["fold"]["total"].median / ref["fold"])],
                ["equalize (load + equalize + save)", c.fmt_s(ref["equalize"]),
                 c.fmt_s(full["equalize"]["total"].median),
                 c.fmt_x(full["equalize"]["total"].median / ref["equalize"])],
            ]),
        ]
    return "\n".join(parts)


def main() -> int:
    models = [*c.sample_models(), c.ensure_mobilenetv2()]
    startup, startup_rss = c.time_process([c.AIMETCLI, "--version"], c.repeats(5))
    results = []
    for path in models:
        small = path.stat().st_size < 4 * 2**20
        c.log(f"rewrites: {path.name}")
        results.append(bench_model(path, c.repeats(7 if small else 5), c.repeats(3)))
    if not c.sample_models():
        c.log(f"rewrites: no sample models in {c.SAMPLE_MODELS} (make sample-models); MobileNetV2 only")
    body = report(results, startup, startup_rss)
    c.write_section("rewrites", "fold-bn and equalize", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
