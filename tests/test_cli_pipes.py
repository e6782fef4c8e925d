"""Pipes and terminals (issue 16 point 4): a closed stdout ends the command quietly, as Unix
tools do; '-o -' refuses a terminal and directory-writing commands; '-' refuses to wait
on a terminal. Real processes, since pipes and terminals are what is tested."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from aimetcli.cli import BROKEN_PIPE_EXIT, main
from helpers import bn_inits, bn_node, init, make_model, rand


@pytest.fixture
def big_model(tmp_path):
    """A model of ~1 MB: more than a pipe holds, so the writer meets the closed pipe."""
    inits = [init("W", rand(256, 64, 4, 4))] + bn_inits("bn", 256)
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv"), bn_node("bn", "y", "z")]
    path = tmp_path / "m.onnx"
    onnx.save(make_model(nodes, [("x", ["N", 64, 8, 8])], [("z", None)], inits), path)
    return path


def aimetcli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "aimetcli", *map(str, args)], **kw)


def test_closed_stdout_is_a_quiet_exit(big_model):
    """`aimetcli fold-bn m.onnx -o - | head -c 10`: no 'internal error (BrokenPipeError)', no
    'Exception ignored' at shutdown; exit 141 as for a process SIGPIPE ends."""
    proc = aimetcli("fold-bn", big_model, "-o", "-", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = proc.stdout.read(10)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == BROKEN_PIPE_EXIT, stderr
    assert len(head) == 10
    assert "Error" not in stderr and "Exception" not in stderr and "BrokenPipe" not in stderr, stderr


def run_with_terminal(args, stream: str) -> subprocess.CompletedProcess:
    """Run with stdin or stdout attached to a pseudo-terminal."""
    primary, secondary = pty.openpty()
    try:
        kw = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, stream: secondary}
        return subprocess.run([sys.executable, "-m", "aimetcli", *map(str, args)], stderr=subprocess.PIPE,
                              timeout=60, text=False, **kw)
    finally:
        os.close(secondary)
        os.close(primary)


def test_stdout_to_a_terminal_is_refused(big_model, tmp_path):
    r = run_with_terminal(["fold-bn", big_model, "-o", "-"], "stdout")
    stderr = r.stderr.decode()
    assert r.returncode == 2, stderr
    assert stderr.strip() == "Error: -o -: stdout is a terminal; redirect it (> out.onnx, | aimetcli ...) " \
                             "or give -o FILE"


def test_stdin_from_a_terminal_is_refused(tmp_path):
    """Reading '-' from a terminal would wait silently for a model nobody types."""
    r = run_with_terminal(["fold-bn", "-", "-o", tmp_path / "f.onnx"], "stdin")
    stderr = r.stderr.decode()
    assert r.returncode == 2, stderr
    assert stderr.startswith("Error: MODEL is '-' but stdin is a terminal") and stderr.count("\n") == 1
    assert not (tmp_path / "f.onnx").exists()


@pytest.mark.parametrize("command,extra", [("ptq", ["--data", "random:4"]), ("export", [])])
def test_directory_commands_refuse_stdout(big_model, tmp_path, command, extra, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, [command, str(big_model), "-o", "-", *extra])
    assert r.exit_code == 2, r.stderr
    assert "writes a directory of files" in r.stderr and "-o out/" in r.stderr
    assert not (tmp_path / "-").exists()


def test_readme_makefile_snippet_creates_its_directory():
    """The README's Makefile snippet must work on a fresh tree: build/ is created."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("```make")
    snippet = readme[start:readme.index("```", start + 3)]
    for line in snippet.splitlines():
        if line.startswith("build/") and ":" in line:
            assert "| build" in line or "mkdir -p" in snippet, line
