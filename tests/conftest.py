import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

sys.path.insert(0, str(Path(__file__).parent))

from helpers import bn_inits, bn_node, init, make_model, rand  # noqa: E402


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def model_path(tmp_path):
    """A Conv -> BatchNormalization model, m.onnx in the test's directory (a module may define its own)."""
    inits = [init("W", rand(4, 3, 3, 3))] + bn_inits("bn", 4)
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1] * 4), bn_node("bn", "y", "z")]
    path = tmp_path / "m.onnx"
    onnx.save(make_model(nodes, [("x", ["N", 3, 8, 8])], [("z", None)], inits), path)
    return path
