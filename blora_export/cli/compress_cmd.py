"""`blora-export compress`: a checkpoint -> a quantized ONNX model, its tokenizer and a BOP audit."""

from __future__ import annotations

import click

from ..export.options import KERNELS, PROFILES, CompressOptions
from . import main
from .errors import user_errors


@main.command("compress")
@click.argument("ckpt", type=click.Path(file_okay=False, path_type=str))
@click.option("--output-dir", "-o", required=True, type=click.Path(path_type=str),
              help="Directory to write (model.onnx, tokenizer, deploy.json, audit.json/.md/.png).")
@click.option("--profile", type=click.Choice(PROFILES), default=CompressOptions.profile, show_default=True,
              help="speed: 2/4-bit weights behind 4/8-bit activations sit in int8 containers so onnxruntime runs "
                   "integer kernels. size: they are packed int4/int2 (smallest file, fp32 kernels).")
@click.option("--kernel", type=click.Choice(KERNELS), default=CompressOptions.kernel, show_default=True,
              help="8-bit weights: fast (int8 codes, onnxruntime's u8s8 kernel: exact on CPUs with VNNI or ARM dot "
                   "products; on AVX2-only x86 it can saturate large products), exact (uint8 codes with zero "
                   "point 128, the u8u8 kernel: exact everywhere, slower) or auto (fast where this CPU runs it "
                   "exactly, else exact).")
@click.option("--portable", is_flag=True,
              help="Standard ONNX operators only (QuantizeLinear/DequantizeLinear around MatMul), for runtimes "
                   "other than onnxruntime. Default: each integer-path Linear is one onnxruntime "
                   "MatMulIntegerToFloat node with its bias inside (same integer products and scales, faster in "
                   "onnxruntime).")
@click.option("--seq-len", type=click.IntRange(min=1), default=None,
              help="Sequence length T at which MACs and BOPs are audited. [default: the checkpoint's, e.g. 128]")
@click.option("--opset", type=click.IntRange(21, 25), default=None,
              help="ONNX opset of the output. [default: 21, or 25 when packed int2 weights are used]")
@click.option("--verify/--no-verify", default=CompressOptions.verify, show_default=True,
              help="Compare onnxruntime with the integer-exact PyTorch reference on validation inputs; fail "
                   "(writing nothing) if its logits leave the reference's own float32 noise (x4).")
@click.option("--validation-file", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="JSON lines with 'text' (and 'text_pair') to verify on, instead of the checkpoint's "
                   "validation.jsonl.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code of the base model.")
@click.option("--peft-adapter", is_flag=True,
              help="Also write the pruned fp32 adapter in PEFT's LoRA format to OUTPUT_DIR/peft_adapter/ "
                   "(per-module ranks and alphas, head in modules_to_save): load it with "
                   "peft.PeftModel.from_pretrained(base_model, 'OUTPUT_DIR/peft_adapter').")
@user_errors
def compress_cmd(ckpt: str, output_dir: str, profile: str, kernel: str, portable: bool, seq_len: int | None,
                 opset: int | None, verify: bool, validation_file: str | None, overwrite: bool, trust_remote_code: bool,
                 peft_adapter: bool = False) -> None:
    """Export the trained checkpoint CKPT to a quantized ONNX model in OUTPUT_DIR.

    Reads the learned ranks and widths once (the deterministic gates), prunes closed ranks, merges the adapters,
    snaps every weight to its learned grid, exports with torch.onnx, inserts Q/DQ per layer, audits BOPs from
    the graph and verifies onnxruntime against PyTorch. OUTPUT_DIR is written atomically and runs with plain
    onnxruntime + transformers.AutoTokenizer, or with blora_export.runtime.load(OUTPUT_DIR).
    """
    from ..export.pipeline import compress

    options = CompressOptions(profile=profile, kernel=kernel, portable=portable, seq_len=seq_len, opset=opset,
                              verify=verify, overwrite=overwrite, validation_file=validation_file,
                              trust_remote_code=trust_remote_code, peft_adapter=peft_adapter)
    result = compress(ckpt, output_dir, options, log=lambda msg: click.echo(msg, err=True))
    totals, size = result.audit.totals, result.audit.size
    click.echo(f"wrote {result.out_dir}: BOPs -{100 * totals.whole_model.reduction:.1f}% whole model, "
               f"-{100 * totals.adapted.reduction:.1f}% adapted projections; "
               f"model.onnx {size.onnx_bytes:,} bytes ({size.ratio:.2f}x fp32)")
