"""Probe, not a feature: what structured pruning would cost in accuracy and buy in onnxruntime speed.

Once every integer product runs the kernel quantize_dynamic uses (BENCHMARKS.md, latency sections), the one
latency lever left is fewer MACs. This measures the two structured forms a BERT-family encoder offers:
feed-forward channels (`--unit ffn`: rows of intermediate.dense and columns of output.dense) and attention
heads (`--unit heads`).

Accuracy: masks on a trained checkpoint's PyTorch model (deterministic gates, i.e. the exported model), ranked
over the whole model by a Fisher score of the mask on training batches (after Kwon et al. 2022, "A Fast
Post-Training Pruning Framework for Transformers", but squared gradients of 8-example batches, not of single
examples); then --recovery-steps of the checkpoint's adapters and head with the mask fixed (AdamW at the
checkpoint's learning rate and weight decay, linear decay from the start, no gradient clipping); the task metric
in PyTorch at the training sequence length before and after. Every keep fraction, 1.0 (the control: recovery
steps without pruning) included, starts from the checkpoint and draws the same batches and dropout.

Speed (`--speed`): quantize_dynamic of the checkpoint's base model with the same fraction of every layer's
channels (heads) sliced off, timed interleaved against quantize_dynamic of the unpruned model
(tools/bench_latency.py's timing). Weights are the base model's: the widths of the graph decide its speed. The
timed model prunes every layer alike while the ranked masks do not: same MACs overall, not the same model.

    python tools/probe_pruning.py CKPT --task sst2 --data-dir ../shared/data/glue/SST-2 --unit heads \\
        --keep 1.0,0.75,0.5 [--speed [--no-accuracy]]
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import click
import torch
from torch import nn

FFN, HEADS = "ffn", "heads"


def encoder_layers(model: nn.Module) -> list[nn.Module]:
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if layers is None:
        raise click.ClickException("the probe knows BERT-family encoders only (base_model.encoder.layer)")
    return list(layers)


def ffn_width(layer: nn.Module) -> int:
    dense = layer.output.dense
    return getattr(dense, "base", dense).in_features  # a checkpoint's Linears are wrapped (GatedLoRALinear)


def head_count(layer: nn.Module) -> int:
    return layer.attention.self.num_attention_heads


def add_masks(model: nn.Module, unit: str) -> list[torch.Tensor]:
    """One mask per layer, multiplied into the pruned unit's output: FFN channels after the activation (so the
    channel's row and column both drop out), heads on the attention context before the output projection."""
    masks = []
    for layer in encoder_layers(model):
        if unit == FFN:
            mask = torch.ones(ffn_width(layer))
            layer.intermediate.register_forward_hook(lambda _m, _i, out, mask=mask: out * mask)
        else:
            mask = torch.ones(head_count(layer))

            def by_head(_m, _i, out, mask=mask):
                context = (out[0].unflatten(-1, (len(mask), -1)) * mask[:, None]).flatten(-2)
                return (context, *out[1:])
            layer.attention.self.register_forward_hook(by_head)
        masks.append(mask)
    return masks


def fisher_scores(model, masks, tokenizer, data, task, examples: int, batch_size: int = 8) -> torch.Tensor:
    """Sum over batches of (d batch loss / d mask)^2, every layer's mask concatenated."""
    from train.batching import collate
    from train.evaluate import loss_sum

    for mask in masks:
        mask.requires_grad_(True)
    scores = [torch.zeros_like(m) for m in masks]
    picked = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:examples].tolist()
    model.eval()
    for start in range(0, len(picked), batch_size):
        batch = collate(tokenizer, data, picked[start:start + batch_size], task.is_regression)
        labels = batch.pop("labels")
        loss = loss_sum(model(**batch).logits, labels, task.is_regression)
        for score, grad in zip(scores, torch.autograd.grad(loss, masks), strict=True):
            score += grad ** 2
    for mask in masks:
        mask.requires_grad_(False)
    return torch.cat(scores)


def keep_top(masks: list[torch.Tensor], scores: torch.Tensor, keep: float) -> list[int]:
    """Close the lowest-scoring units of the whole model until `keep` of them are left; the kept count per layer."""
    flat = torch.zeros_like(scores)
    flat[scores.argsort(descending=True)[:round(keep * len(scores))]] = 1.0
    for mask, part in zip(masks, flat.split([len(m) for m in masks]), strict=True):
        mask.copy_(part)
    return [int(m.sum()) for m in masks]


def recover(model, meta, tokenizer, data, task, steps: int) -> None:
    """Train the adapters and the head with the masks fixed, at the checkpoint's learning rate, weight decay and
    batch size (train's defaults where it records none)."""
    from blora_export import roles
    from train.batching import collate
    from train.evaluate import loss_sum
    from train.options import OptimSpec

    params = []
    for role, tensor in roles.trained_tensors(model, meta.head).values():
        if isinstance(tensor, nn.Parameter):
            tensor.requires_grad_(role in (roles.ADAPTER, roles.HEAD))
            if tensor.requires_grad:
                params.append(tensor)
    if not steps or not params:
        return
    optim = OptimSpec(**meta.options.get("optim", {}))  # as TrainConfig.from_dict reads it
    opt = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / steps)
    draws = torch.Generator().manual_seed(1)
    torch.manual_seed(1)  # dropout and the frozen weights' sampled gradient: the same draws for every keep fraction
    model.train()
    for _ in range(steps):
        batch = collate(tokenizer, data, torch.randint(len(data), (optim.batch_size,), generator=draws).tolist(),
                        task.is_regression)
        labels = batch.pop("labels")
        loss = loss_sum(model(**batch).logits, labels, task.is_regression) / len(labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()


def sliced(model: nn.Module, unit: str, keep: float) -> nn.Module:
    """A copy with the first `keep` of every layer's channels (heads) and nothing of the rest."""
    model = copy.deepcopy(model)

    def narrow(linear: nn.Linear, rows: int | None = None, cols: int | None = None) -> nn.Linear:
        weight = linear.weight.data[:rows, :cols]
        out = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
        out.weight.data = weight.clone()
        if linear.bias is not None:
            out.bias.data = linear.bias.data[:rows].clone()
        return out

    for layer in encoder_layers(model):
        if unit == FFN:
            k = max(1, round(keep * ffn_width(layer)))
            layer.intermediate.dense = narrow(layer.intermediate.dense, rows=k)
            layer.output.dense = narrow(layer.output.dense, cols=k)
        else:
            attention = layer.attention.self
            heads = max(1, round(keep * head_count(layer)))
            k = heads * attention.attention_head_size
            for name in ("query", "key", "value"):
                setattr(attention, name, narrow(getattr(attention, name), rows=k))
            layer.attention.output.dense = narrow(layer.attention.output.dense, cols=k)
            attention.num_attention_heads, attention.all_head_size = heads, k
    return model


def speed_table(ckpt: Path, meta, unit: str, keeps: list[float], seq_len: int, runs: int) -> str:
    from bench_latency import DYNAMIC, dynamic_int8, measure, table
    from transformers import AutoTokenizer

    from blora_export.base_model import load_base_model
    from blora_export.export.onnx_export import export_float, model_input_names

    base = load_base_model(meta.base_model, len(meta.labels), meta.id2label, meta.problem_type).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
    names = model_input_names(base, tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for keep in sorted({1.0, *keeps}, reverse=True):
            work = Path(tmp) / f"keep{keep}"
            work.mkdir()
            fp32 = work / "fp32.onnx"
            fp32.write_bytes(export_float(sliced(base, unit, keep), names).SerializeToString())
            models[DYNAMIC if keep == 1.0 else f"{DYNAMIC}, {unit} keep {keep}"] = dynamic_int8(fp32, work)
        return table(models, measure(models, [1, 2], [8, 1], seq_len, runs, vocab=len(tokenizer)), seq_len)


@click.command()
@click.argument("ckpt", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--task", required=True, help="The task the checkpoint was trained on (as for train).")
@click.option("--data-dir")
@click.option("--train-file")
@click.option("--validation-file")
@click.option("--unit", type=click.Choice([FFN, HEADS]), default=FFN, show_default=True)
@click.option("--keep", "keeps", default="1.0,0.75,0.5", show_default=True,
              help="Fractions of the units to keep, over the whole model.")
@click.option("--recovery-steps", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--fisher-examples", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--speed/--no-speed", default=False, show_default=True,
              help="Also time quantize_dynamic of the sliced base model (1 and 2 threads x batch 8 and 1, 15 runs).")
@click.option("--seq-len", default=128, show_default=True, help="Sequence length of the timed batches.")
@click.option("--accuracy/--no-accuracy", default=True, show_default=True,
              help="--no-accuracy: only the speed table (time it on an otherwise idle machine).")
def main(ckpt, task, data_dir, train_file, validation_file, unit, keeps, recovery_steps, fisher_examples, threads,
         speed, seq_len, accuracy) -> None:
    """Accuracy (and speed) of a checkpoint with feed-forward channels or attention heads pruned."""
    from transformers import AutoTokenizer

    from blora_export.checkpoint import load_checkpoint
    from blora_export.data import DataSpec, load
    from blora_export.errors import UserError
    from train.batching import encode
    from train.evaluate import evaluate

    torch.set_num_threads(threads)
    try:
        keep_list = [float(k) for k in keeps.split(",")]
    except ValueError:
        raise click.BadParameter(f"{keeps!r} is not a comma-separated list of numbers", param_hint="--keep") from None
    if not all(0 < k <= 1 for k in keep_list):
        raise click.BadParameter("every fraction must be in (0, 1]", param_hint="--keep")
    if not (speed or accuracy):
        raise click.UsageError("--no-accuracy without --speed measures nothing")
    try:
        trained, meta = load_checkpoint(ckpt)
        dataset = load(DataSpec(task=task, data_dir=data_dir, train_file=train_file, validation_file=validation_file,
                                max_seq_length=meta.max_seq_length).validate()) if accuracy else None
    except UserError as e:
        raise click.ClickException(str(e)) from None
    if speed:
        click.echo(speed_table(ckpt, meta, unit, keep_list, seq_len, 15) + "\n")
    if not accuracy:
        return
    tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
    train_data = encode(tokenizer, dataset.train, meta.max_seq_length)
    eval_data = encode(tokenizer, dataset.validation, meta.max_seq_length)
    metric = dataset.task.metric

    model = copy.deepcopy(trained)  # every row starts from the untouched checkpoint, without another row's hooks
    scores = fisher_scores(model, add_masks(model, unit), tokenizer, train_data, dataset.task, fisher_examples)
    click.echo(f"| {unit} keep | kept per layer | {metric}, pruned | {metric}, after {recovery_steps} "
               "recovery steps |\n|---|---|---|---|")
    for keep in keep_list:
        model = copy.deepcopy(trained)
        kept = keep_top(add_masks(model, unit), scores, keep)
        pruned = evaluate(model, tokenizer, eval_data, dataset.task, 64, torch.device("cpu"))[metric]
        recover(model, meta, tokenizer, train_data, dataset.task, recovery_steps)
        recovered = evaluate(model, tokenizer, eval_data, dataset.task, 64, torch.device("cpu"))[metric]
        click.echo(f"| {keep} | {kept} | {100 * pruned:.1f} | {100 * recovered:.1f} |")


if __name__ == "__main__":
    main()
