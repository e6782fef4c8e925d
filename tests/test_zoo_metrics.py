"""bench/zoo_metrics.py's paired bootstrap: the interval the zoo table puts beside a gap."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
zoo_metrics = pytest.importorskip("zoo_metrics")


def _samples(noise, task, signal=None):
    n = len(noise)
    return {"signal": [1.0] * n if signal is None else signal, "noise": list(noise), "task": list(task)}


def test_the_interval_brackets_zero_for_one_flipped_sample_and_not_for_a_steady_gain():
    same = _samples([0.01] * 64, [1.0] * 64)
    one_flip = _samples([0.01] * 64, [1.0] * 63 + [0.0])
    spread = zoo_metrics.paired_interval(one_flip, same)
    lo, hi = spread["task_points"]
    assert lo < 0 <= hi and spread["samples"] == 64  # one sample of 64: within the noise
    assert spread["sqnr_db"] == [0.0, 0.0]
    better = _samples([0.005] * 64, [1.0] * 64)  # every sample's error halved: +3 dB
    lo, hi = zoo_metrics.paired_interval(better, same)["sqnr_db"]
    assert lo == pytest.approx(10 * np.log10(2)) and hi == pytest.approx(lo)
    assert zoo_metrics.paired_interval({}, same) is None
