"""Every check that needs neither the model nor the data runs before anything is loaded
(issue 16 point 1, issue 15 item 3): output path not the input, its parent directory
present, its location writable, a directory output not an existing file, option
combinations (encodings version against bitwidths). Each case asserts the exit code,
the one error line, that the model was never loaded (``api.load`` is replaced by a
function that fails the test) and that nothing was written.
"""

from __future__ import annotations

import errno
import os
import tempfile

import numpy as np
import pytest

from aimetcli import api, model_io, paths
from aimetcli.cli import main


@pytest.fixture
def never_loaded(monkeypatch):
    """The model must not be loaded: the check comes first."""

    def load(*args, **kwargs):
        raise AssertionError("the model was loaded before the up-front checks")

    monkeypatch.setattr(api, "load", load)


def error_line(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.stderr, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and "internal error" not in lines[0], lines[0]
    return lines[0]


def files_in(directory) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


# every command that writes, with its extra arguments
WRITERS = {
    "fold-bn": [],
    "equalize": [],
    "bias-correct": ["--method", "analytical"],
    "quantsim": ["--data", "random:4"],
    "ptq": ["--data", "random:4"],
    "export": [],
}


def test_ptq_output_is_the_input_model(runner, model_path, never_loaded):
    before = model_path.read_bytes()
    line = error_line(runner.invoke(main, ["ptq", str(model_path), "-o", str(model_path), "--data", "random:4"]), 1)
    assert "is a file (it is the input model)" in line and "give a directory" in line
    assert model_path.read_bytes() == before


@pytest.mark.parametrize("command", ["fold-bn", "equalize", "bias-correct", "quantsim"])
def test_file_output_is_the_input_model(runner, model_path, never_loaded, command):
    before = model_path.read_bytes()
    r = runner.invoke(main, [command, str(model_path), "-o", str(model_path), *WRITERS[command]])
    assert "would overwrite the input" in error_line(r, 2)
    assert model_path.read_bytes() == before


@pytest.mark.parametrize("command", ["ptq", "quantsim"])
@pytest.mark.parametrize("flag", ["--param-bw", "--act-bw"])
def test_encoding_version_against_bitwidth_up_front(runner, model_path, tmp_path, never_loaded, command, flag):
    out = tmp_path / ("out" if command == "ptq" else "sim.onnx")
    r = runner.invoke(main, [command, str(model_path), "-o", str(out), *WRITERS[command],
                             flag, "6", "--encoding-version", "2.0.0"])
    line = error_line(r, 2)
    assert "--encoding-version 2.0.0 cannot hold 6-bit" in line and "--encoding-version 1.0.0" in line
    assert files_in(tmp_path) == {"m.onnx"}


def test_encoding_version_rule_is_the_writers(runner, model_path, tmp_path, never_loaded):
    """4-bit fits 2.0.0 (int4): the up-front check applies the writer's rule, not a stricter one."""
    from aimetcli.encodings import check_bitwidth

    check_bitwidth("2.0.0", 4)
    with pytest.raises(ValueError):
        check_bitwidth("2.0.0", 6)
    r = runner.invoke(main, ["quantsim", str(model_path), "-o", str(tmp_path / "s.onnx"), "--data", "random:4",
                             "--param-bw", "4", "--encoding-version", "2.0.0"])
    assert "the model was loaded" in r.stderr  # got past the check


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_output_parent_missing(runner, model_path, tmp_path, never_loaded, command):
    out = tmp_path / "nodir" / "sub" / ("out" if command in ("ptq", "export") else "out.onnx")
    line = error_line(runner.invoke(main, [command, str(model_path), "-o", str(out), *WRITERS[command]]), 1)
    assert "does not exist" in line and "create it first" in line
    assert files_in(tmp_path) == {"m.onnx"}


@pytest.mark.parametrize("command", ["ptq", "export"])
def test_directory_output_is_an_existing_file(runner, model_path, tmp_path, never_loaded, command):
    existing = tmp_path / "report.txt"
    existing.write_text("keep me")
    line = error_line(runner.invoke(main, [command, str(model_path), "-o", str(existing), *WRITERS[command]]), 1)
    assert "exists and is a file" in line and "give a directory" in line
    assert existing.read_text() == "keep me"


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_output_location_not_writable(runner, model_path, tmp_path, monkeypatch, never_loaded, command):
    """A read-only location (EROFS: what root meets too, whom permission bits do not stop) is
    found by creating a file there before any work."""

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(paths.tempfile, "mkstemp", read_only)
    out = tmp_path / ("out" if command in ("ptq", "export") else "out.onnx")
    line = error_line(runner.invoke(main, [command, str(model_path), "-o", str(out), *WRITERS[command]]), 1)
    assert "cannot write in" in line and "Read-only file system" in line
    assert files_in(tmp_path) == {"m.onnx"}


def test_output_directory_read_only_by_permissions(runner, model_path, tmp_path):
    """chmod 0o555 for real: refused up front, unless this user (root) can write there anyway."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        try:
            tempfile.TemporaryFile(dir=locked).close()
            pytest.skip("this user writes into a 0o555 directory (root)")
        except OSError:
            pass
        line = error_line(runner.invoke(main, ["fold-bn", str(model_path), "-o", str(locked / "f.onnx")]), 1)
        assert "cannot write in" in line
        assert not list(locked.iterdir())
    finally:
        locked.chmod(0o755)


def test_plot_path_checked_before_work(runner, model_path, tmp_path, never_loaded):
    r = runner.invoke(main, ["equalize", str(model_path), "-o", str(tmp_path / "e.onnx"),
                             "--plot", str(tmp_path / "nodir" / "r.png")])
    assert "does not exist" in error_line(r, 1)
    assert files_in(tmp_path) == {"m.onnx"}


@pytest.mark.parametrize("command", ["fold-bn", "export"])
def test_late_write_failure_is_one_clean_line(runner, model_path, tmp_path, monkeypatch, command):
    """The file system refusing at the very end (read-only remount, removed directory) is one
    line naming the path and the reason, not "internal error", and leaves nothing behind."""
    source = model_path
    if command == "export":
        source = tmp_path / "sim.onnx"
        assert runner.invoke(main, ["quantsim", str(model_path), "-o", str(source), "--data", "random:4"]
                             ).exit_code == 0
    before = files_in(tmp_path)

    def refuse(tmp, final_dir, names):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(final_dir / names[0]))

    monkeypatch.setattr(model_io, "commit_staged", refuse)
    out = tmp_path / ("deploy" if command == "export" else "f.onnx")
    line = error_line(runner.invoke(main, [command, str(source), "-o", str(out)]), 1)
    assert "Read-only file system" in line and str(tmp_path) in line
    assert files_in(tmp_path) - before <= {"deploy"}  # export creates the directory, writes nothing in it
    assert not list(out.iterdir()) if out.is_dir() else not out.exists()


def test_data_shape_checked_before_calibration(runner, model_path, tmp_path, monkeypatch):
    """Data that does not fit the model's input is refused after loading, before any calibration."""
    data = tmp_path / "calib.npy"
    np.save(data, np.zeros((4, 3, 5, 5), np.float32))

    def quantsim(*args, **kwargs):
        raise AssertionError("calibration started before the data was checked")

    monkeypatch.setattr(api, "quantsim", quantsim)
    r = runner.invoke(main, ["quantsim", str(model_path), "-o", str(tmp_path / "s.onnx"), "--data", str(data)])
    assert error_line(r, 1)
    assert not (tmp_path / "s.onnx").exists()


@pytest.mark.parametrize("command", ["quantsim", "bias-correct", "ptq"])
def test_config_read_before_the_model(runner, model_path, tmp_path, never_loaded, command):
    bad = tmp_path / "cfg.json"
    bad.write_text("{not json")
    out = tmp_path / ("out" if command == "ptq" else "out.onnx")
    line = error_line(runner.invoke(main, [command, str(model_path), "-o", str(out), *WRITERS[command],
                                           "--config", str(bad)]), 1)
    assert "--config" in line and "not valid JSON" in line
    assert files_in(tmp_path) == {"m.onnx", "cfg.json"}


@pytest.mark.parametrize("command, args", [
    ("quantsim", ["-o", "{tmp}/s.onnx", "--data", "{tmp}/missing.npz"]),
    ("bias-correct", ["-o", "{tmp}/b.onnx", "--data", "{tmp}/missing.npz"]),
    ("evaluate", ["--data", "{tmp}/missing.npz"]),
    ("ptq", ["-o", "{tmp}/out", "--data", "{tmp}/missing.npz"]),
    ("ptq", ["-o", "{tmp}/out", "--data", "random:4", "--eval", "{tmp}/missing.npz"]),
])
def test_missing_data_refused_before_the_model(runner, model_path, tmp_path, never_loaded, command, args):
    """A missing --data or --eval file was found only after the model was loaded."""
    argv = [command, str(model_path), *(a.format(tmp=tmp_path) for a in args)]
    line = error_line(runner.invoke(main, argv), 1)
    option = "--eval" if "--eval" in args else "--data"
    assert line == f"Error: {option} {tmp_path}/missing.npz: no such file or directory"
    assert files_in(tmp_path) == {"m.onnx"}


def test_missing_model_named_before_missing_data(runner, tmp_path, never_loaded):
    """A missing model and a missing --data: the model is the first thing to fix."""
    line = error_line(runner.invoke(main, ["ptq", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "out"),
                                           "--data", str(tmp_path / "x.npz")]), 1)
    assert line == f"Error: {tmp_path}/none.onnx: no such file; check the path"
    assert not (tmp_path / "out").exists()
