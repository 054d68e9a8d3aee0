"""The export stage: checkpoint -> frozen plan -> merged float model -> ONNX -> Q/DQ graph -> audit and verify.

Modules, one concept each:
  plan         the frozen compression plan (the ONLY place gates are read)
  merge        prune closed ranks, merge adapters, snap weights to their learned grids; the float model
  onnx_export  torch.onnx export of the merged float model, opset conversion, canonical names
  qdq          the graph pass that turns the float graph into the quantized graph, driven by the plan
  graph_audit  BOPs read from any ONNX graph (widths from types, values and recorded metadata)
  verify       onnxruntime against the PyTorch eval forward on real inputs
  report       audit.md and audit.png
  pipeline     compress(): the one function the CLI calls

onnx, onnxruntime and matplotlib are imported inside these modules only; `import blora_export` stays cheap.
"""
