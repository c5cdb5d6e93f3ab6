"""Runtimes that execute compiled artifacts (ONNX Runtime; TensorRT later)."""
