"""Path checks every command runs before any work (light: no onnx, no numpy).

A path is checked where it will be written: its directory exists, a file can be
created and removed there (the one test that holds for root, whom permission bits
do not stop, and for read-only mounts), it is not a directory where a file is
expected nor a file where a directory is, and it is not the input model.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from aimetcli.errors import AimetCliError, ErrorKind

STDIO = "-"
# A data source that is drawn, not read: ``random:N`` (calibration.data opens it).
RANDOM_DATA = re.compile(r"random:(.*)", re.IGNORECASE)


def check_input_model(source: str) -> None:
    """Fail early when an input model path (not '-') does not exist or is a directory."""
    if source == STDIO:
        return
    path = Path(source)
    if not path.exists():
        raise AimetCliError(f"{source}: no such file; check the path")
    if path.is_dir():
        raise AimetCliError(f"{source}: is a directory; give the path of an .onnx file")


def check_data_source(option: str, spec: str) -> None:
    """Fail early when a data source (``--data``, ``--eval``) names a path that does not exist."""
    if RANDOM_DATA.fullmatch(spec) is None and not os.path.exists(spec):
        raise AimetCliError(f"{option} {spec}: no such file or directory", ErrorKind.DATA)


def check_output_path(dest: str, *, source: str | None = None) -> None:
    """Fail early (before any work) when an output file cannot be written where asked:
    its directory missing or not writable, the path a directory, or the input itself."""
    if dest == STDIO:
        return
    path = Path(dest)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise AimetCliError(
            f"{dest}: output directory {parent} does not exist; create it first", ErrorKind.OUTPUT
        )
    if not parent.is_dir():
        raise AimetCliError(f"{dest}: {parent} is not a directory; choose another output path", ErrorKind.OUTPUT)
    if path.is_dir():
        raise AimetCliError(f"{dest}: is a directory; give a file name for the output", ErrorKind.OUTPUT)
    if _same_file(source, path):
        raise AimetCliError(f"{dest}: the output would overwrite the input; write to another file", ErrorKind.USAGE)
    probe_writable(parent, dest)


def check_output_dir(dest: str, *, source: str | None = None, what: str = "the output") -> None:
    """Fail early when an output directory (ptq, export) cannot be created or written:
    ``dest`` an existing file (the input model, say), its parent missing, or not writable.
    The directory itself is created by the command, without parents."""
    path = Path(dest)
    if path.exists() and not path.is_dir():
        inputs = " (it is the input model)" if _same_file(source, path) else ""
        raise AimetCliError(f"{dest}: exists and is a file{inputs}; {what} is a directory of files: give a "
                            "directory for -o, e.g. out/", ErrorKind.OUTPUT)
    parent = path.parent if str(path.parent) else Path(".")
    if not path.exists() and not parent.is_dir():
        raise AimetCliError(f"{dest}: parent directory {parent} does not exist; create it first", ErrorKind.OUTPUT)
    probe_writable(path if path.exists() else parent, dest)


def _same_file(source: str | None, path: Path) -> bool:
    return (source is not None and source != STDIO and Path(source).exists() and path.exists()
            and os.path.samefile(source, path))


def probe_writable(directory: Path, dest: str) -> None:
    """Create and remove a file in ``directory``: the one test that holds for root (whom
    permission bits do not stop), read-only mounts and full disks alike."""
    try:
        fd, name = tempfile.mkstemp(prefix=".aimetcli-probe-", dir=directory)
    except OSError as exc:
        raise AimetCliError(f"{dest}: cannot write in {directory} ({exc.strerror or exc}); "
                            "choose another output path", ErrorKind.OUTPUT) from exc
    os.close(fd)
    os.unlink(name)
