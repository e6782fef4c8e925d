#!/usr/bin/env python3
"""The commands on weight-heavy real topologies: VGG19 (548 MB of weights) and AlexNet (233 MB).

The models are the onnx package's test topologies (onnx/backend/test/data/light: real graphs,
opset 8 or 9, fixed batch of 1, constant weights), so nothing is downloaded. Each command runs
as a fresh `aimetcli -q` process, as a build script would call it, on `random:2` data (two
samples: the cost here is the weights, not the data): fold-bn, equalize, bias-correct (hybrid),
quantsim (min-max, per-tensor), quantsim (tf-enhanced, per-channel), export and the whole ptq.
Wall time and peak RSS of each process; the floor is a fresh `python -c` doing onnx.load +
onnx.save of the folded model (the test files make their weights with Constant nodes).

Run: ``python bench/bench_heavy.py`` (writes the ``heavy`` section).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as c  # noqa: E402

MODELS = (("vgg19", "light_vgg19.onnx"), ("alexnet", "light_bvlc_alexnet.onnx"))
FLOOR = "import onnx, sys; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])"


def light_dir() -> Path:
    import onnx

    return Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"


def steps(src: Path, out: Path) -> list[tuple[str, list[str]]]:
    return [
        ("fold-bn", ["fold-bn", str(src), "-o", str(out / "f.onnx")]),
        ("equalize", ["equalize", str(out / "f.onnx"), "-o", str(out / "e.onnx")]),
        ("bias-correct", ["bias-correct", str(out / "e.onnx"), "-o", str(out / "bc.onnx"), "--data", "random:2"]),
        ("quantsim", ["quantsim", str(out / "bc.onnx"), "-o", str(out / "sim.onnx"), "--data", "random:2"]),
        ("quantsim tf-enhanced per-channel", ["quantsim", str(out / "e.onnx"), "-o", str(out / "simt.onnx"),
                                              "--data", "random:2", "--quant-scheme", "tf-enhanced",
                                              "--per-channel"]),
        ("export", ["export", str(out / "sim.onnx"), "-o", str(out / "deploy")]),
        ("ptq", ["ptq", str(src), "-o", str(out / "ptq"), "--data", "random:2"]),
    ]


def main() -> int:
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="aimetcli-heavy-", dir=c.DATA if c.DATA.exists() else None))
    try:
        for name, file in MODELS:
            src = light_dir() / file
            if not src.exists():
                rows.append([name, "missing", "", "", "", ""])
                continue
            out = scratch / name
            out.mkdir(parents=True)
            timed = []
            for label, args in steps(src, out):
                c.log(f"heavy: {name} {label}")
                timed.append((label, *c.time_process([c.AIMETCLI, "-q", *args], 1)))
            # the file in the test data makes its weights with Constant nodes (a few KB); the
            # floor is load + save of the folded model, which holds them as initializers
            folded = out / "f.onnx"
            floor, floor_rss = c.time_process([c.PYTHON, "-c", FLOOR, str(folded), str(out / "floor.onnx")], 1)
            rows.append([name, "onnx load + save of the folded model (floor)", c.fmt_mb(folded.stat().st_size),
                         c.fmt_s(floor.median), "1.0x", c.fmt_mb(floor_rss)])
            for label, t, rss in timed:
                rows.append([name, label, "", c.fmt_s(t.median), c.fmt_x(t.median / floor.median), c.fmt_mb(rss)])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    body = "\n".join([
        "Each command as a fresh `aimetcli -q` process on the onnx package's light_vgg19 / "
        "light_bvlc_alexnet topologies (opset 8/9, so quantsim converts them to 13; weights made by Constant "
        "nodes, which fold-bn lifts to initializers), `random:2` data; "
        "one run each (these take seconds to minutes; the machine's load drifts by about 20%). "
        "x floor = against a fresh process doing onnx.load + onnx.save of the folded model.\n",
        c.table(["model", "command", "model size", "time", "x floor", "peak RSS"], rows),
    ])
    c.write_section("heavy", "Weight-heavy models (VGG19, AlexNet)", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
