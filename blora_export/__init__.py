"""blora-export: Bayesian-LoRA fine-tuning and exact ONNX export of quantized encoders.

Importing the package is cheap: onnx, onnxruntime, datasets and matplotlib are imported lazily
by the modules that need them.
"""

__version__ = "0.1.0"
