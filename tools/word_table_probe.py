"""What the size profile's 4-bit word table costs: PyTorch accuracy of trained checkpoints as trained and with
the word table re-quantized the way `compress --profile size` does it (export/tables.py).

    .venv/bin/python tools/word_table_probe.py --task classification --validation-file V.csv CKPT... >> probe.tsv

Prints one tab-separated line per checkpoint: path, examples, accuracy as trained, with the 4-bit table, diff.
"""

from __future__ import annotations

import click
import numpy as np
import torch
from transformers import AutoTokenizer

from blora_export.checkpoint import load_checkpoint
from blora_export.data import DataSpec, load_validation
from blora_export.export.onnx_export import model_input_names
from blora_export.export.tables import narrow_word_table
from blora_export.export.verify import encode_batches, torch_logits


def _accuracy(model, batches, labels: np.ndarray) -> float:
    return float((torch_logits(model, batches).argmax(-1) == labels).mean())


@click.command()
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--task", required=True, help="The task of the data (e.g. sst2, classification).")
@click.option("--data-dir", help="A GLUE task directory.")
@click.option("--validation-file", help="A validation file (csv/tsv/json/jsonl).")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--threads", default=1, show_default=True)
def main(checkpoints, task, data_dir, validation_file, batch_size, threads):
    torch.set_num_threads(threads)
    spec = DataSpec(task=task, data_dir=data_dir, validation_file=validation_file)
    for ckpt in checkpoints:
        model, meta = load_checkpoint(ckpt)
        tokenizer = AutoTokenizer.from_pretrained(ckpt)
        _, examples = load_validation(spec, list(meta.labels))
        labels = np.array([e.label for e in examples])
        batches = encode_batches(tokenizer, [e.to_dict() for e in examples], model_input_names(model, tokenizer),
                                 meta.max_seq_length, batch_size)
        trained = _accuracy(model, batches, labels)
        if narrow_word_table(model, "size") is None:
            raise click.ClickException(f"{ckpt}: the size profile keeps this checkpoint's word table")
        narrowed = _accuracy(model, batches, labels)
        click.echo(f"{ckpt}\t{len(examples)}\t{trained:.4f}\t{narrowed:.4f}\t{narrowed - trained:+.4f}")


if __name__ == "__main__":
    main()
