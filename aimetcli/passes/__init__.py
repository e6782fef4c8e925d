"""Graph rewrites, one technique per module, each an onnx-ir pass."""
