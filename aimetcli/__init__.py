"""aimetcli: AIMET's post-training quantization workflow for plain ONNX files."""

from aimetcli import _lazy_sympy

_lazy_sympy.install()

__version__ = "0.1.0"
