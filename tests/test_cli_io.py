"""CLI through click's CliRunner: exit codes, one-line errors, stdin/stdout, atomic output."""

from __future__ import annotations

import json
import os
import stat

import onnx
import pytest
from onnx import helper

from aimetcli.cli import main
from helpers import make_model, op_count


def one_error_line(result, code=1):
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    return lines[0]


def test_version_and_help(runner):
    r = runner.invoke(main, ["--version"])
    assert r.exit_code == 0 and "aimetcli" in r.stdout
    r = runner.invoke(main, ["--help"])
    assert r.exit_code == 0
    for name, command in main.commands.items():
        assert command.help, name
        assert "Example" in command.help, f"{name} help has no example"
        assert runner.invoke(main, [name, "--help"]).exit_code == 0


def test_fold_bn_file_to_file(runner, model_path, tmp_path):
    before = model_path.read_bytes()
    out = tmp_path / "out.onnx"
    r = runner.invoke(main, ["fold-bn", str(model_path), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert op_count(onnx.load(out), "BatchNormalization") == 0
    assert model_path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".aimetcli-")]


def test_fold_bn_json(runner, model_path, tmp_path):
    r = runner.invoke(main, ["fold-bn", str(model_path), "-o", str(tmp_path / "o.onnx"), "--json"])
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert doc["command"] == "fold-bn" and doc["remaining_bn"] == 0
    assert doc["folded"][0]["bn"] == "bn" and doc["folded"][0]["direction"] == "backward"
    # global flag before the command works too
    r = runner.invoke(main, ["--json", "-q", "fold-bn", str(model_path), "-o", str(tmp_path / "o2.onnx")])
    assert json.loads(r.stdout)["remaining_bn"] == 0
    assert r.stderr.strip() == ""


def test_stdin_to_stdout(runner, model_path):
    r = runner.invoke(main, ["fold-bn", "-", "-o", "-"], input=model_path.read_bytes())
    assert r.exit_code == 0, r.stderr
    model = onnx.load_from_string(r.stdout_bytes)
    assert op_count(model, "BatchNormalization") == 0


def test_json_with_stdout_model_is_usage_error(runner, model_path):
    r = runner.invoke(main, ["fold-bn", str(model_path), "-o", "-", "--json"])
    assert "both write to stdout" in one_error_line(r, 2)


@pytest.mark.parametrize(
    "content, expect",
    [
        (None, "no such file"),
        (b"", "empty"),
        (os.urandom(64) + b"\xff\xff\xff", "not an ONNX model"),
        (b"hello, this is a text file\n" * 5, "not an ONNX model"),
    ],
)
def test_bad_inputs(runner, tmp_path, content, expect):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "o.onnx"
    r = runner.invoke(main, ["fold-bn", str(path), "-o", str(out)])
    assert expect in one_error_line(r)
    assert not out.exists()


def test_truncated_model(runner, model_path, tmp_path):
    data = model_path.read_bytes()
    path = tmp_path / "trunc.onnx"
    path.write_bytes(data[: len(data) // 2])
    r = runner.invoke(main, ["fold-bn", str(path), "-o", str(tmp_path / "o.onnx")])
    line = one_error_line(r)
    assert "not an ONNX model" in line or "checker" in line


def test_directory_input(runner, tmp_path):
    r = runner.invoke(main, ["fold-bn", str(tmp_path), "-o", str(tmp_path / "o.onnx")])
    assert "is a directory" in one_error_line(r)


def test_checker_failure(runner, tmp_path):
    proto = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", [1])], [("y", [1])], [])
    proto.graph.node[0].input[0] = "dangling"
    path = tmp_path / "d.onnx"
    onnx.save(proto, path)
    r = runner.invoke(main, ["fold-bn", str(path), "-o", str(tmp_path / "o.onnx")])
    assert "onnx.checker" in one_error_line(r)


def test_missing_output_dir(runner, model_path, tmp_path):
    r = runner.invoke(main, ["fold-bn", str(model_path), "-o", str(tmp_path / "nope" / "o.onnx")])
    assert "does not exist" in one_error_line(r)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_read_only_output_dir(runner, model_path, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        r = runner.invoke(main, ["fold-bn", str(model_path), "-o", str(ro / "o.onnx")])
        assert "not writable" in one_error_line(r)
    finally:
        ro.chmod(stat.S_IRWXU)


def test_output_over_input_is_refused(runner, model_path):
    before = model_path.read_bytes()
    r = runner.invoke(main, ["fold-bn", str(model_path), "-o", str(model_path)])
    assert "overwrite the input" in one_error_line(r, 2)
    assert model_path.read_bytes() == before


def test_empty_stdin(runner):
    r = runner.invoke(main, ["fold-bn", "-", "-o", "-"], input=b"")
    assert "standard input is empty" in one_error_line(r)


def test_missing_required_option_is_usage_error(runner, model_path):
    r = runner.invoke(main, ["fold-bn", str(model_path)])
    assert r.exit_code == 2


def test_external_data_round_trip(runner, model_path, tmp_path):
    out = tmp_path / "ext.onnx"
    r = runner.invoke(main, ["fold-bn", str(model_path), "-o", str(out), "--external-data"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ext.onnx.data").exists()
    # the external-data model can be read back by aimetcli and by onnx
    r = runner.invoke(main, ["fold-bn", str(out), "-o", str(tmp_path / "again.onnx")])
    assert r.exit_code == 0, r.output
    onnx.checker.check_model(str(out))


def test_simplify_flag(runner, model_path, tmp_path):
    r = runner.invoke(main, ["fold-bn", str(model_path), "-o", str(tmp_path / "s.onnx"), "--simplify", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["remaining_bn"] == 0


def test_every_command_is_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert readme.startswith("```\nmake demo")
    for name in main.commands:
        assert f"aimetcli {name} " in readme, name


def test_json_summary_with_infinite_sqnr(runner, model_path):
    # identical models: SQNR is infinite, which JSON cannot hold; it is written as null
    r = runner.invoke(main, ["evaluate", str(model_path), str(model_path), "--data", "random:4", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["comparisons"][0]["sqnr_db"] is None and doc["top1_agreement"] == 100.0


def test_sympy_is_not_imported_unless_used(tmp_path):
    """onnx-ir's sympy import (most of the start-up time) is deferred until something uses it."""
    import subprocess
    import sys
    from pathlib import Path

    SAMPLE = Path(__file__).resolve().parent.parent / "sample_models" / "resnet_fmnist.onnx"

    script = (
        "import sys, aimetcli.cli\n"
        "from aimetcli import api\n"
        f"m, _ = api.load({str(SAMPLE)!r}); api.fold_bn(m)\n"
        "assert 'sympy.core' not in sys.modules, 'sympy imported'\n"
        "import onnx_ir as ir\n"
        "assert str(ir.SymbolicDim('N') * 2) == '2*N'  # still works, importing it now\n"
        "assert 'sympy.core' in sys.modules\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
