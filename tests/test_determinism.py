"""Same command, same input -> byte-identical files; Ctrl-C -> exit 130 and no partial output."""

from __future__ import annotations

import onnx
import pytest
from click.testing import CliRunner

from aimetcli.cli import main
from helpers import make_model, two_conv_classifier


@pytest.fixture
def model_path(tmp_path):
    nodes, inits = two_conv_classifier(8)
    path = tmp_path / "m.onnx"
    onnx.save(make_model(nodes, [("input", ["N", 3, 16, 16])], [("logits", None)], inits), path)
    return path


@pytest.mark.parametrize("command", [
    ["fold-bn"], ["equalize"], ["bias-correct", "--data", "random:16"],
    ["quantsim", "--data", "random:16", "--quant-scheme", "tf-enhanced", "--per-channel"],
])
def test_byte_identical_outputs(tmp_path, model_path, command):
    outputs = []
    for i in range(2):
        out = tmp_path / f"out{i}.onnx"
        r = CliRunner().invoke(main, [command[0], str(model_path), "-o", str(out), *command[1:]])
        assert r.exit_code == 0, r.output
        files = [out.read_bytes()]
        enc = tmp_path / f"out{i}.encodings"
        if enc.exists():
            files.append(enc.read_bytes())
        outputs.append(files)
    assert outputs[0] == outputs[1]


def test_ctrl_c_during_calibration_exits_130_without_output(tmp_path, model_path, monkeypatch):
    from aimetcli import runtime

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime.Session, "run", interrupted)
    for command in (["quantsim", "--data", "random:16"], ["bias-correct", "--data", "random:16"]):
        out = tmp_path / "o.onnx"
        r = CliRunner().invoke(main, [command[0], str(model_path), "-o", str(out), *command[1:]])
        assert r.exit_code == 130, r.output
        assert "Interrupted" in r.stderr and "Traceback" not in r.output
        assert not out.exists() and not (tmp_path / "o.encodings").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".aimetcli-")]
