"""aimetcli: AIMET's post-training quantization workflow for plain ONNX files."""

__version__ = "0.1.0"
