"""Runtimes that execute compiled artifacts: ONNX Runtime sessions, TensorRT engines, the generate loop."""
