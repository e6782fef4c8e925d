"""Two pieces of numpy work at once: one in a forked child process, one in the caller.

Python threads share one interpreter lock, and a loop of small numpy calls (AdaRound's
iterations on a layer of a few thousand weights: 25 calls of 1-5 us each) holds it most of the
time, so a second thread gains nothing there. A forked child has its own interpreter and sees
the caller's arrays without a copy (copy-on-write); only its result crosses a pipe, pickled.

:func:`beside` runs ``theirs`` in the child and ``mine`` in the caller, and returns both
results. It is a speed-up only: where fork is missing (not Linux), fails, or the child does not
deliver (killed, out of memory, an exception), the caller computes ``theirs`` itself, so the
results never depend on it. The child ignores SIGINT (the caller's Ctrl-C ends it), writes
nothing to stdout or stderr, and leaves by ``os._exit`` (no atexit handlers, no flushed buffers
of the caller's).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import warnings
from typing import Callable, TypeVar

A = TypeVar("A")
B = TypeVar("B")


def available() -> bool:
    """fork on Linux (macOS's system libraries are not fork-safe) and a second core to use."""
    if sys.platform != "linux" or not hasattr(os, "fork"):
        return False
    try:
        return len(os.sched_getaffinity(0)) >= 2
    except OSError:
        return False


def beside(mine: Callable[[], A], theirs: Callable[[], B]) -> tuple[A, B]:
    """(mine(), theirs()), theirs computed in a forked child while the caller computes mine."""
    if not available():
        return mine(), theirs()
    read, write = os.pipe()
    try:
        with warnings.catch_warnings():  # Python 3.12+ warns on fork in a multi-threaded process
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        os.close(read)
        os.close(write)
        return mine(), theirs()
    if pid == 0:  # the child
        os.close(read)
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            data = pickle.dumps(theirs(), protocol=pickle.HIGHEST_PROTOCOL)
            with os.fdopen(write, "wb") as out:
                out.write(data)
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    done = False
    with os.fdopen(read, "rb") as pipe:
        try:
            result = mine()
            data = pipe.read()
            _, status = os.waitpid(pid, 0)
            done = True
        finally:
            if not done:  # the caller's work raised (Ctrl-C included): end the child
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except OSError:
                    pass
    if os.waitstatus_to_exitcode(status) == 0:
        try:
            return result, pickle.loads(data)
        except Exception:  # a truncated message: computed here instead
            pass
    return result, theirs()
