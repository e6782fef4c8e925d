"""A model over protobuf's 2 GB limit through fold-bn, equalize and quantsim, with peak memory.

Builds (once, in bench/data/) a chain of large Gemm layers, each followed by a
BatchNormalization and Relu, saved with external data; then runs each command as
its own process and reads its peak resident memory (ru_maxrss of the child).
Goal (issue 7): the rewrites stay under 2x the model size.

    python bench/bench_big_model.py [--gb 2.2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


def build(path: Path, gigabytes: float, seed: int = 0) -> int:
    """Gemm(+BN+Relu) x L with square weights, enough layers to pass ``gigabytes``."""
    n = 8192
    layer_bytes = n * n * 4
    layers = max(1, int(np.ceil(gigabytes * 2**30 / layer_bytes)))
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    x = "input"
    for i in range(layers):
        w = (rng.standard_normal((n, n), dtype=np.float32) * np.float32(1.0 / np.sqrt(n)))
        w *= (10.0 ** rng.uniform(-1, 1, (n, 1))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        for name, arr in (("g", rng.uniform(0.5, 1.5, n)), ("b", rng.normal(0, 0.2, n)),
                          ("m", rng.normal(0, 0.1, n)), ("v", rng.uniform(0.5, 2, n))):
            inits.append(numpy_helper.from_array(arr.astype(np.float32), f"bn{i}_{name}"))
        nodes.append(helper.make_node("Gemm", [x, f"W{i}"], [f"y{i}"], transB=1, name=f"fc{i}"))
        nodes.append(helper.make_node("BatchNormalization", [f"y{i}", f"bn{i}_g", f"bn{i}_b", f"bn{i}_m", f"bn{i}_v"],
                                      [f"z{i}"], name=f"bn{i}"))
        out = "logits" if i == layers - 1 else f"r{i}"
        nodes.append(helper.make_node("Relu", [f"z{i}"], [out]))
        x = out
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    return layers * layer_bytes


_WRAPPER = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter(); p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "print(json.dumps([time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
    " p.returncode, p.stderr[-2000:]]))\n"
)


def run(cmd: list[str]) -> tuple[float, float, int]:
    """Wall time, peak RSS (GiB) of the command, exit code: each in a fresh wrapper process,
    because RUSAGE_CHILDREN keeps the maximum over every child a process ever had."""
    out = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, check=True)
    seconds, kib, code, stderr = json.loads(out.stdout)
    if code != 0:
        print(stderr, file=sys.stderr)
    return seconds, kib / 2**20, code


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=2.2)
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    src = DATA / "big.onnx"
    if not src.exists() or not (DATA / "big.onnx.data").exists():
        build(src, args.gb)
    size = (DATA / "big.onnx.data").stat().st_size / 2**30
    aimetcli = str(Path(sys.executable).parent / "aimetcli")
    np.save(DATA / "big_calib.npy", np.random.default_rng(0).standard_normal((8, 8192)).astype(np.float32))
    rows = []
    for name, cmd in [
        ("fold-bn", [aimetcli, "fold-bn", str(src), "-o", str(DATA / "big_folded.onnx"), "-q"]),
        ("equalize", [aimetcli, "equalize", str(src), "-o", str(DATA / "big_eq.onnx"), "-q"]),
        ("quantsim", [aimetcli, "quantsim", str(DATA / "big_folded.onnx"), "-o", str(DATA / "big_sim.onnx"),
                      "--data", str(DATA / "big_calib.npy"), "-q"]),
        # AdaRound's bounded memory a layer (issue 18): 8 samples, so each Gemm keeps its patch rows
        # (8 x 8192), not G and C (2 x 8192^2 float64); few iterations (each one updates 67 M weights)
        ("adaround (W4, 10 iterations)", [aimetcli, "adaround", str(DATA / "big_folded.onnx"), "-o",
                                          str(DATA / "big_ar.onnx"), "--data", str(DATA / "big_calib.npy"),
                                          "--param-bw", "4", "--iterations", "10", "-q"]),
    ]:
        seconds, peak, code = run(cmd)
        rows.append({"command": name, "seconds": round(seconds, 1), "peak_gib": round(peak, 2),
                     "peak_over_model": round(peak / size, 2), "exit": code})
        print(json.dumps(rows[-1]))
    print(json.dumps({"model_gib": round(size, 2), "rows": rows}, indent=2))
    sys.path.insert(0, str(HERE))
    from common import table, write_section

    body = (f"A chain of Gemm(8192x8192)+BatchNormalization+Relu layers, {size:.2f} GiB of weights in external "
            "data (over protobuf's 2 GB limit); each command in a fresh process, peak resident set of that "
            "process. Goal (issue 7): the rewrites under 2x the model size. adaround (issue 18): each pass "
            "quantizes only the weights its graph reads, lets go of the FP32 weights behind its cut, and a layer "
            "over 4 M weights is optimised a block of output channels at a time (docs/design.md, \"AdaRound on "
            "the real models\").\n\n"
            + table(["command", "seconds", "peak RSS (GiB)", "x model size", "exit"],
                    [[r["command"], r["seconds"], r["peak_gib"], r["peak_over_model"], r["exit"]] for r in rows]))
    write_section("big_model", "A model over 2 GB", body)


if __name__ == "__main__":
    main()
