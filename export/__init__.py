"""Export side (torch -> ONNX): bundle writer and parity checks."""
