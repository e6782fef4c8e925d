"""aimetcli: AIMET's post-training quantization workflow for plain ONNX files.

The Python API is :mod:`aimetcli.api` (docs/api.md); the command line is :mod:`aimetcli.cli`.
"""

__version__ = "0.1.0"
