"""The `blora-export` command line: a thin shell, each command builds a config and calls one library function."""

from __future__ import annotations

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="blora-export")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Fine-tune Hugging Face encoders with Bayesian-LoRA and export them to quantized ONNX.

    \b
    Typical flow:
      blora-export train --model MODEL --task sst2 --data-dir glue/SST-2 --output-dir ckpt
      blora-export compress ckpt --output-dir out
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register() -> None:
    # Each command lives in its own module; importing them here keeps `import blora_export` cheap.
    from . import audit_cmd, compress_cmd, eval_cmd, train_cmd  # noqa: F401


_register()
