"""Models out of PyTorch: ONNX export with a parity check (onnx_export.py) and running an export (runtime.py)."""
