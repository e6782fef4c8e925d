"""Errors that reach the user as one line and an exit code.

Every failure the library can foresee is raised as :class:`AimetCliError` with a
:class:`ErrorKind`. The CLI prints ``Error: <message>`` on one line and exits with
the kind's exit code: 2 for usage errors, 1 for everything else (130 is used by the
CLI itself for Ctrl-C). Messages name the problem *and* the fix.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    USAGE = "usage"  # wrong option values or combinations
    INPUT = "input"  # input file missing, unreadable, not ONNX, invalid
    OUTPUT = "output"  # output cannot be written where asked
    DATA = "data"  # calibration or evaluation data does not fit the model
    CONFIG = "config"  # quantsim config or encodings file malformed
    UNSUPPORTED = "unsupported"  # the model uses something we cannot process
    RUNTIME = "runtime"  # onnxruntime failed on the model

    @property
    def exit_code(self) -> int:
        return 2 if self is ErrorKind.USAGE else 1


class AimetCliError(Exception):
    """A foreseen failure with a one-line, actionable message."""

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.INPUT):
        # One line, always: collapse anything a library handed us.
        super().__init__(" ".join(str(message).split()))
        self.kind = kind

    @property
    def message(self) -> str:
        return str(self)

    @property
    def exit_code(self) -> int:
        return self.kind.exit_code

