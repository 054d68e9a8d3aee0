"""Naive float export of the merged model (torch.onnx, TorchScript path), opset conversion and tidy names.

All quantization happens afterwards, in the Q/DQ graph pass; this module only produces a float graph whose
weights are the snapped values.
"""

from __future__ import annotations

import inspect
import io
import warnings

import torch
from torch import nn

from .. import __version__
from ..errors import UserError

EXPORT_OPSET = 18  # torch.onnx (dynamo=False) export opset; converted to the plan's opset afterwards
_WRAPPER = "model"
DUMMY_BATCH, DUMMY_SEQ = 2, 8


class ExportError(UserError, RuntimeError):
    """torch.onnx could not export the merged model, or the result is not what the pass expects."""


class _Logits(nn.Module):
    """Positional inputs in a fixed order -> logits only (the graph output `logits`)."""

    def __init__(self, model: nn.Module, input_names: list[str]):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)

    def forward(self, *args):
        return self.model(**dict(zip(self.input_names, args, strict=True)), return_dict=True).logits


def model_input_names(model: nn.Module, tokenizer) -> list[str]:
    """The tokenizer outputs the model uses: input_ids, attention_mask, and token_type_ids where they matter."""
    accepted = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    uses_types = getattr(model.config, "type_vocab_size", 0) > 0
    if uses_types and "token_type_ids" in accepted and "token_type_ids" in tokenizer.model_input_names:
        names.append("token_type_ids")
    return names


def export_float(model: nn.Module, input_names: list[str]):
    """torch.onnx.export(dynamo=False) at EXPORT_OPSET with dynamic batch and sequence axes; returns a ModelProto."""
    import onnx

    seq = min(DUMMY_SEQ, getattr(model.config, "max_position_embeddings", DUMMY_SEQ) or DUMMY_SEQ)
    ids = torch.ones(DUMMY_BATCH, seq, dtype=torch.long)
    dummy = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    args = tuple(dummy[n] for n in input_names)
    axes = {n: {0: "batch", 1: "sequence"} for n in input_names}
    axes["logits"] = {0: "batch"}
    buffer = io.BytesIO()
    wrapper = _Logits(model, input_names).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, args, buffer, input_names=input_names, output_names=["logits"],
                              dynamic_axes=axes, opset_version=EXPORT_OPSET, do_constant_folding=True,
                              dynamo=False)
    except Exception as e:  # torch.onnx raises many types; report one line
        raise ExportError(f"torch.onnx could not export the merged model: {type(e).__name__}: {e}") from e
    proto = onnx.load_from_string(buffer.getvalue())
    found = [i.name for i in proto.graph.input]
    if found != input_names:
        raise ExportError(f"exported graph inputs {found} differ from the expected {input_names}")
    strip_wrapper_prefix(proto)
    return proto


def strip_wrapper_prefix(proto) -> None:
    """Rename values `model.x` -> `x` and nodes `/model/x` -> `/x` (the wrapper's attribute adds that prefix)."""
    prefix, node_prefix = _WRAPPER + ".", "/" + _WRAPPER + "/"
    mapping = {}
    g = proto.graph
    names = [i.name for i in g.initializer] + [o for n in g.node for o in n.output]
    for name in names:
        if name.startswith(prefix):
            mapping[name] = name[len(prefix):]
        elif name.startswith(node_prefix):
            mapping[name] = "/" + name[len(node_prefix):]
    rename_values(g, mapping)
    for n in g.node:
        if n.name.startswith(node_prefix):
            n.name = "/" + n.name[len(node_prefix):]


def rename_values(graph, mapping: dict[str, str]) -> None:
    """Rename tensors everywhere in a graph (initializers, node inputs/outputs, graph inputs/outputs, value_info)."""
    if not mapping:
        return
    taken = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    clash = (set(mapping.values()) & taken) - set(mapping)
    if clash:
        raise ExportError(f"renaming would clash with existing tensors: {sorted(clash)[:3]}")
    for t in graph.initializer:
        t.name = mapping.get(t.name, t.name)
    for n in graph.node:
        for i, x in enumerate(n.input):
            n.input[i] = mapping.get(x, x)
        for i, x in enumerate(n.output):
            n.output[i] = mapping.get(x, x)
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        v.name = mapping.get(v.name, v.name)


def convert_opset(proto, opset: int):
    """Convert to the final opset and the IR version it needs; producer fields name this tool (deterministic)."""
    import onnx
    from onnx import helper, version_converter

    try:
        out = version_converter.convert_version(proto, opset)
    except Exception as e:
        raise ExportError(f"could not convert the graph from opset {EXPORT_OPSET} to {opset}: {e}") from e
    out.ir_version = helper.find_min_ir_version_for(list(out.opset_import))
    out.producer_name = "blora-export"
    out.producer_version = __version__
    out.doc_string = ""
    out.graph.doc_string = ""
    out.graph.name = "blora_export"
    for n in out.graph.node:
        n.doc_string = ""
    del out.graph.value_info[:]
    onnx.checker.check_model(out)
    return out
