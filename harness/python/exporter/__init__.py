"""GGUF -> ONNX exporter for codegen-harness (gguf + numpy + onnx + onnxruntime; no torch).

Run as `python -m exporter export MODEL.gguf --out DIR [--target cpu|cuda]
[--precision int4|int8|fp16|fp32]` with this folder (harness/python) on sys.path.
"""

__version__ = "0.2.0"
