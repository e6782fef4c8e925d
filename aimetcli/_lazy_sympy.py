"""Defer importing sympy until something uses it.

onnx-ir imports sympy at start-up for symbolic dimension arithmetic, which
aimetcli never does: that import is 0.5-0.7 s of every command's ~1 s start-up.
Before onnx-ir is first imported, ``sympy`` and onnx-ir's ``_symbolic_shapes``
(which reads sympy attributes at import time) are registered as placeholder
modules: the first attribute anyone reads from one imports the real module,
which from then on serves every access (the placeholder forwards to it). The
standard library's LazyLoader cannot do this before Python 3.12: the import
statement itself reads the module's ``__spec__`` and so loads it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
import types

_NAMES = ("sympy", "onnx_ir._symbolic_shapes")
_lock = threading.RLock()


class _Deferred(types.ModuleType):
    def __init__(self, name: str, spec: importlib.machinery.ModuleSpec):
        super().__init__(name)
        self.__spec__ = spec
        self.__dict__["_aimetcli_real"] = None

    def __getattr__(self, attr: str):  # only for attributes the placeholder does not have
        real = self.__dict__["_aimetcli_real"]
        if real is None:
            with _lock:
                real = self.__dict__["_aimetcli_real"]
                if real is None:
                    if sys.modules.get(self.__name__) is self:
                        del sys.modules[self.__name__]
                    real = importlib.import_module(self.__name__)
                    self.__dict__["_aimetcli_real"] = real
        return getattr(real, attr)


def install() -> None:
    if any(name in sys.modules for name in ("onnx_ir", *_NAMES)):
        return  # too late, or already paid for: nothing to gain
    try:
        specs = {"sympy": importlib.util.find_spec("sympy")}
        package = importlib.util.find_spec("onnx_ir")  # finds, does not import, a top-level package
        if package is not None and package.submodule_search_locations:
            specs["onnx_ir._symbolic_shapes"] = importlib.machinery.PathFinder.find_spec(
                "onnx_ir._symbolic_shapes", list(package.submodule_search_locations))
        if all(spec is not None for spec in specs.values()) and len(specs) == 2:
            for name, spec in specs.items():
                sys.modules[name] = _Deferred(name, spec)
    except Exception:  # an optimisation only: never break start-up
        for name in _NAMES:
            if isinstance(sys.modules.get(name), _Deferred):
                del sys.modules[name]
