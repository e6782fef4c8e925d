"""Does proto_wire still pay? Load and serialize a big model (VGG19's folded weights, 548 MB, one file)
with and without it, in one process, alternating, 3 rounds each; and each path's peak memory in a
fresh child process.

    python bench/bench_proto_wire.py [model.onnx]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common as c  # noqa: E402


def _plain(on: bool):
    """Context: proto_wire's split and splice switched off (``on`` False), or on whatever the
    model's size (its size gate, ``MIN_MODEL_BYTES``, lowered to 0)."""
    from aimetcli import proto_wire as wire

    saved = wire.split_raw_data, wire.splice, wire.MIN_MODEL_BYTES

    def no_split(data):
        return None

    def no_splice(head, slots):
        raise wire.WireError("off")

    class Ctx:
        def __enter__(self):
            wire.MIN_MODEL_BYTES = 0
            if not on:
                wire.split_raw_data, wire.splice = no_split, no_splice

        def __exit__(self, *exc):
            wire.split_raw_data, wire.splice, wire.MIN_MODEL_BYTES = saved

    return Ctx()


def timed(path: str, on: bool) -> dict[str, float]:
    from aimetcli import model_io

    with _plain(on):
        t0 = time.perf_counter()
        model = model_io.load_model(path).model
        t1 = time.perf_counter()
        data = model_io.serialize(model)
        t2 = time.perf_counter()
    del data, model
    return {"load": t1 - t0, "serialize": t2 - t1}


def peak(path: str, on: bool) -> int:
    timed(path, on)
    return c.peak_rss()


def main() -> int:
    if len(sys.argv) > 1:
        path = sys.argv[1]
    else:
        import onnx

        src = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light" / "light_vgg19.onnx"
        tmp = Path(tempfile.mkdtemp(prefix="aimetcli-wire-"))
        path = str(tmp / "vgg19_folded.onnx")
        subprocess.run([c.AIMETCLI, "-q", "fold-bn", str(src), "-o", path], check=True)
    print(f"model: {path}, {os.path.getsize(path) / 2**20:.0f} MB")
    samples: dict[tuple[bool, str], list[float]] = {}
    timed(path, True)  # warm the page cache
    for _ in range(3):
        for on in (True, False):
            for k, v in timed(path, on).items():
                samples.setdefault((on, k), []).append(v)
    for on in (True, False):
        med = {k: sorted(v)[1] for (o, k), v in samples.items() if o == on}
        _, hwm = c.in_child(peak, path, on)
        print(f"proto_wire {'on ' if on else 'off'}: load {med['load']:.2f} s, serialize {med['serialize']:.2f} s "
              f"(medians of 3; all: {[round(x, 2) for (o, k), v in samples.items() if o == on for x in v]}), "
              f"peak RSS load+serialize {hwm / 2**20:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
