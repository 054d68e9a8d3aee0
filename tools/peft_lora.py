"""The peer: PEFT LoRA fine-tuned with the transformers Trainer, as a user would do without this project, on the
same data, targets, rank, alpha, learning rate, batch size and number of steps as `blora-export train`.

    python tools/peft_lora.py --model DIR --task sst2 --data-dir glue/SST-2 --steps 200 --json result.json
    python tools/peft_lora.py --model DIR --task classification --train-file train.csv \
        --validation-file validation.csv --steps 200 --json result.json

Prints and writes {metrics, seconds_per_step, steps, ...}; the validation metrics come from the same
evaluation code as `blora-export train`'s, so the numbers compare directly.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click
import torch

from blora_export.config import BLoRAConfig
from blora_export.data import DataSpec
from train.options import OptimSpec, TrainConfig


def peft_model(model_dir: str, labels: list[str], problem_type: str, targets: str, rank: int, alpha: float):
    from peft import LoraConfig, get_peft_model

    from blora_export.base_model import load_base_model
    from blora_export.targets import head_modules, resolve_targets

    model = load_base_model(model_dir, len(labels), dict(enumerate(labels)), problem_type)
    modules = sorted({name.rsplit(".", 1)[-1] for name in resolve_targets(model, targets)})
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules, lora_dropout=0.0,
                        modules_to_save=head_modules(model))
    return get_peft_model(model, config)


def train_peft(model_ref: str, data, optim, targets: str, steps: int, rank: int, alpha: float,
               eval_batch_size: int) -> dict:
    """Train with transformers.Trainer; returns the validation metrics and the measured seconds per step.

    `data` is a blora_export.data.DataSpec, `optim` a train.options.OptimSpec: the learning rate, weight decay,
    warm-up, clipping and seed `blora-export train` would use."""
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from blora_export.data import load
    from train.batching import encode
    from train.evaluate import evaluate
    from train.schedules import warmup_steps

    dataset = load(data)
    tokenizer = AutoTokenizer.from_pretrained(model_ref)
    train_data = encode(tokenizer, dataset.train, data.max_seq_length)
    eval_data = encode(tokenizer, dataset.validation, data.max_seq_length)
    rows = [{**{k: v[i] for k, v in train_data.features.items()}, "labels": train_data.labels[i]}
            for i in range(len(train_data))]
    torch.manual_seed(optim.seed)  # the head's and lora_A's initialisation
    model = peft_model(model_ref, dataset.labels, dataset.task.problem_type, targets, rank, alpha)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, max_steps=steps, per_device_train_batch_size=optim.batch_size, learning_rate=optim.lr,
            weight_decay=optim.weight_decay, warmup_steps=warmup_steps(steps, optim.warmup_steps, optim.warmup_ratio),
            lr_scheduler_type="linear", max_grad_norm=optim.max_grad_norm, seed=optim.seed, save_strategy="no",
            logging_strategy="no", report_to=[], dataloader_num_workers=0, use_cpu=not torch.cuda.is_available())
        trainer = Trainer(model=model, args=args, train_dataset=rows,
                          data_collator=DataCollatorWithPadding(tokenizer))
        tic = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - tic
    metrics = evaluate(model, tokenizer, eval_data, dataset.task, eval_batch_size, next(model.parameters()).device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"method": "peft", "metrics": metrics, "metric": dataset.task.metric, "steps": steps,
            "seconds_per_step": seconds / steps, "train_seconds": seconds, "trainable_parameters": trainable,
            "train_examples": len(train_data), "validation_examples": len(eval_data)}


@click.command()
@click.option("--model", required=True, help="Model directory or hub name.")
@click.option("--task", required=True, help="GLUE task name or 'classification'.")
@click.option("--data-dir", default=None)
@click.option("--train-file", default=None)
@click.option("--validation-file", default=None)
@click.option("--text-column", default=None)
@click.option("--label-column", default=None)
@click.option("--max-train-samples", type=int, default=None)
@click.option("--max-seq-length", default=DataSpec.max_seq_length, show_default=True)
@click.option("--steps", required=True, type=int)
@click.option("--batch-size", default=OptimSpec.batch_size, show_default=True)
@click.option("--rank", default=BLoRAConfig.max_rank, show_default=True)
@click.option("--lora-alpha", default=BLoRAConfig.lora_alpha, show_default=True)
@click.option("--lora-targets", default=BLoRAConfig.targets, show_default=True)
@click.option("--seed", default=OptimSpec.seed, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the result as JSON.")
def main(model, task, data_dir, train_file, validation_file, text_column, label_column, max_train_samples,
         max_seq_length, steps, batch_size, rank, lora_alpha, lora_targets, seed, json_path) -> None:
    """Fine-tune MODEL with PEFT LoRA (transformers Trainer) and print its validation metrics."""
    data = DataSpec(task=task, data_dir=data_dir, train_file=train_file, validation_file=validation_file,
                    text_column=text_column, label_column=label_column, max_train_samples=max_train_samples,
                    max_seq_length=max_seq_length)
    optim = OptimSpec(batch_size=batch_size, seed=seed)
    result = train_peft(model, data, optim, lora_targets, steps, rank, lora_alpha, TrainConfig.eval_batch_size)
    click.echo(json.dumps(result, indent=2, sort_keys=True))
    if json_path:
        json_path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
