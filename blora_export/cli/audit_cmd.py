"""`blora-export audit MODEL.onnx`: the BOP audit of any ONNX encoder, as a table or as audit.json's schema."""

from __future__ import annotations

import json

import click

from . import main
from .errors import user_errors


@main.command("audit")
@click.argument("model", type=click.Path(path_type=str))
@click.option("--seq-len", type=click.IntRange(min=1), default=128, show_default=True,
              help="Sequence length T of the batch-1 input at which MACs and BOPs are counted.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (compress's audit.json schema: seq_len, layers, totals, size) instead "
                   "of the table.")
@user_errors
def audit_cmd(model: str, seq_len: int, as_json: bool) -> None:
    """Count the bit operations (BOPs = MACs x weight bits x activation bits) of the ONNX model MODEL.

    Reads every matrix product, its MACs at batch 1 x T and its operand widths from the graph itself: works on
    compress outputs and on graphs from other tools (fp32 exports, onnxruntime quantize_dynamic and
    quantize_static outputs). Those carry no learned ranks and no adapted projections: rank is null and the
    "adapted" totals are empty.

    \b
    Examples:
      blora-export audit out/model.onnx
      blora-export audit model.int8.onnx --seq-len 256 --json > audit.json
    """
    from ..export.audit_file import audit_onnx, format_table

    audit = audit_onnx(model, seq_len)
    click.echo(json.dumps(audit.to_dict(), indent=2, sort_keys=True) if as_json else format_table(audit))
