"""numpy's BLAS on one thread for a while (no dependency beyond numpy).

AdaRound's iterations are thousands of small matrix products ([m, d] x [d, d]); OpenBLAS
splits each over its threads, and on a loaded 2-core machine the threads wait for each other,
so such a product is slower on OpenBLAS's default than on one thread (docs/design.md,
"Measurements behind code choices"). :func:`single_threaded` sets OpenBLAS's thread-local thread count
(``openblas_set_num_threads_local``, OpenBLAS >= 0.3.27, which numpy's wheels bundle) to 1 and
restores it; where that symbol is not found (another BLAS) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools


@functools.cache
def _set_local():
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return None
    for path in paths:
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int]
        fn.restype = ctypes.c_int
        return fn
    return None


@contextlib.contextmanager
def single_threaded():
    """numpy's OpenBLAS calls from this thread run on one thread inside the block."""
    import numpy  # noqa: F401  (loads the BLAS library the maps are searched for)

    fn = _set_local()
    previous = fn(1) if fn is not None else None
    try:
        yield
    finally:
        if fn is not None:
            fn(previous)
