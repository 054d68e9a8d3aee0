"""`blora-export eval OUT`: the task metric of a compress output in onnxruntime (and of its checkpoint)."""

from __future__ import annotations

import json

import click

from ..evaluation import EvalOptions
from . import main
from .errors import user_errors


@main.command("eval")
@click.argument("out", type=click.Path(path_type=str))
@click.option("--task", required=True, help="GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, mnli-mm, qnli, rte, "
              "wnli) or 'classification' (labels named as in the model).")
@click.option("--data-dir", type=click.Path(path_type=str), help="Directory in the GLUE layout: its dev file "
              "(dev.tsv; MNLI: dev_matched.tsv; 'classification': dev.* or validation.*) is evaluated.")
@click.option("--validation-file", type=click.Path(path_type=str), help="Validation file (.csv, .tsv, .json, "
                                                                         ".jsonl).")
@click.option("--text-column", help="Column of the (first) text. Default: the task's, or 'text'/'sentence'.")
@click.option("--text-pair-column", help="Column of the second text of a sentence-pair task.")
@click.option("--label-column", help="Column of the label. Default: the task's, or 'label'.")
@click.option("--max-eval-samples", type=click.IntRange(min=1), help="Use only the first N validation examples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=EvalOptions.batch_size, show_default=True,
              help="Inference batch size.")
@click.option("--ckpt", type=click.Path(path_type=str), help="The checkpoint OUT was compressed from: also report "
              "its PyTorch metric (eval mode) and how often ONNX and PyTorch predict the same class.")
@click.option("--noise-floor", is_flag=True, help="With --ckpt: also report how many of the checkpoint's own "
              "predictions change when its input embeddings move by float32 ulps (the noise compress's "
              "verification is based on), i.e. the flips float32 order alone causes. Four extra passes.")
@click.option("--trust-remote-code", is_flag=True, help="Allow custom model code of the checkpoint's base model.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@user_errors
def eval_cmd(out: str, task: str, data_dir: str | None, validation_file: str | None, text_column: str | None,
             text_pair_column: str | None, label_column: str | None, max_eval_samples: int | None, batch_size: int,
             ckpt: str | None, noise_floor: bool, trust_remote_code: bool, as_json: bool) -> None:
    """Evaluate the exported model in OUT (a `compress` output directory) on validation data.

    Reads the data with the same code as `train`, maps its labels to the label names saved in OUT/deploy.json,
    runs OUT/model.onnx in onnxruntime and prints the task metric and examples/second.

    \b
    Examples:
      blora-export eval out --task sst2 --data-dir glue/SST-2
      blora-export eval out --task classification --validation-file dev.csv --text-column review \\
          --label-column stars --ckpt ckpt --json
    """
    from ..data import DataSpec
    from ..evaluation import evaluate_export, format_result

    data = DataSpec(task=task, data_dir=data_dir, validation_file=validation_file, text_column=text_column,
                    text_pair_column=text_pair_column, label_column=label_column, max_eval_samples=max_eval_samples)
    options = EvalOptions(data, batch_size=batch_size, ckpt=ckpt, trust_remote_code=trust_remote_code,
                          noise_floor=noise_floor)
    result = evaluate_export(out, options, log=lambda msg: click.echo(msg, err=True))
    click.echo(json.dumps(result, indent=2, sort_keys=True) if as_json else format_result(result))
