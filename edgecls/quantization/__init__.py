"""Post-training quantization per backend (ONNX Runtime, NNCF/OpenVINO, TFLite) and the
layer-level diagnostics parity uses to say where an INT8 artifact goes wrong."""
