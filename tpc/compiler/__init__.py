"""Compile pipeline: trace, run passes, export ONNX, prepare for a runtime, verify."""
