"""The export stage: checkpoint -> frozen plan -> merged float model -> ONNX -> Q/DQ graph -> audit and verify.

Modules, one concept each:
  options         CompressOptions (light: the command line reads its defaults)
  plan            the frozen compression plan (the ONLY place gates are read)
  merge           prune closed ranks, merge adapters, snap weights to their learned grids; the float model
  onnx_export     torch.onnx export of the merged float model, opset conversion, canonical names
  qdq             the graph pass that turns the float graph into the quantized graph, driven by the plan
  graph_products  every matrix product of any ONNX graph: MACs and the widths the graph shows
  graph_audit     this exporter's graphs: learned widths checked as bounds, BOPs per layer
  foreign_graph   other tools' graphs: layer names from module paths, notes
  verify          onnxruntime against the PyTorch eval forward on real inputs
  measure         the kernels onnxruntime chose, batch-1 latency
  artifacts       audit.json (Audit) and deploy.json (Deploy): one typed definition each
  report          audit.md and audit.png
  pipeline        compress(): the one function the CLI calls
  audit_file      the audit of any ONNX file (`blora-export audit`)
  peft_adapter    the pruned adapter in PEFT's LoRA format

onnx, onnxruntime and matplotlib are imported inside these modules only; `import blora_export` stays cheap.
See docs/ARCHITECTURE.md for the data flow and docs/ONNX.md for the representation of each width.
"""
