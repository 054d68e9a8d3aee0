"""`blora-export train`: build a TrainConfig from the flags (and --config FILE), call train.run.

Every default shown is read from its dataclass (BLoRAConfig, DataSpec, OptimSpec, TrainConfig), where it is
stated once. Kept free of torch imports so `blora-export --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from click.core import ParameterSource

from train.options import BUDGET_MODES, COMPILE, GATE_OPTIMIZERS, OptimSpec, TrainConfig

from ..config import CALIBRATIONS, DEFAULT_SEQ_LEN, DEPLOY_TARGETS, BLoRAConfig
from ..data import DataSpec
from ..errors import UserError
from . import main
from .errors import CommandLineError, user_errors


def _bits(value) -> tuple[int, ...] | None:
    """'2,4,8' (flag) or [2, 4, 8] (config file) -> (2, 4, 8)."""
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        return tuple(int(str(p).strip()) for p in parts if str(p).strip())
    except ValueError:
        # a click exception: option callbacks run before the command's own error handling
        raise CommandLineError(f"widths must be comma-separated integers such as 2,4,8,16,32, got {value!r}") \
            from None


def _bits_callback(_ctx, _param, value):
    return _bits(value)


def _optional_float(_ctx, param, value):
    """A number, or 'none' (kept as the string: TrainConfig.from_flags maps it to None)."""
    if value is None or str(value).strip().lower() == "none":
        return None if value is None else "none"
    try:
        return float(value)
    except ValueError:
        raise CommandLineError(f"--{param.name.replace('_', '-')} takes a number or 'none', got {value!r}") from None


def _widths(widths: tuple[int, ...]) -> str:
    return ",".join(str(b) for b in widths)


@main.command("train", context_settings={"show_default": True})
# model and task
@click.option("--model", help="Hugging Face model name or local directory (AutoModelForSequenceClassification; "
              "a fresh classification head is added). Required (here or in --config).")
@click.option("--task", help="GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, mnli-mm, qnli, rte, wnli) or "
              "'classification' for any labelled text file. Required (here or in --config).")
@click.option("--output-dir", help="Checkpoint directory to write (atomically). Required (here or in --config).")
@click.option("--trust-remote-code", is_flag=True, help="Allow model code from the hub repository to run.")
# data
@click.option("--data-dir", type=click.Path(), help="Directory in the GLUE layout (train.tsv, dev.tsv; MNLI: "
              "dev_matched.tsv). For 'classification': train.* and dev.* (tsv/csv/json/jsonl).")
@click.option("--train-file", type=click.Path(), help="Training file (.csv, .tsv, .json, .jsonl).")
@click.option("--validation-file", type=click.Path(), help="Validation file (.csv, .tsv, .json, .jsonl).")
@click.option("--text-column", help="Column of the (first) text. Default: the task's, or 'text'/'sentence'.")
@click.option("--text-pair-column", help="Column of the second text of a sentence-pair task.")
@click.option("--label-column", help="Column of the label (strings or integers). Default: the task's, or 'label'.")
@click.option("--max-train-samples", type=int, help="Use only the first N training examples.")
@click.option("--max-eval-samples", type=int, help="Use only the first N validation examples.")
@click.option("--max-seq-length", type=int, default=DataSpec.max_seq_length,
              help="Truncate token sequences to this length.")
# method
@click.option("--method", default=BLoRAConfig.method,
              help="blora (learned ranks and widths), lora (fp32 LoRA baseline) or qat (fixed --w-bits/--a-bits "
                   "quantization-aware LoRA).")
@click.option("--w-bits", type=int, default=BLoRAConfig.qat_w_bits, help="qat: weight width.")
@click.option("--a-bits", type=int, default=BLoRAConfig.qat_a_bits, help="qat: activation width.")
@click.option("--max-rank", type=int, default=BLoRAConfig.max_rank, help="LoRA rank r_max.")
@click.option("--lora-alpha", type=float, default=BLoRAConfig.lora_alpha,
              help="LoRA scaling alpha (W += alpha/r B A).")
@click.option("--lora-targets", default=BLoRAConfig.targets,
              help="Adapted modules: qkv, all-linear, or comma-separated module names (exact or dotted suffixes).")
@click.option("--bops-budget", callback=_optional_float, default=str(BLoRAConfig.bops_budget),
              help="blora: the most BOPs the exported model may use, as a fraction of the fp32 model's (attention "
                   "included); the price adapts during training until the model fits, and a final step closes the "
                   "cheapest levels if it still does not. 'none': a fixed price instead (the BOP weight).")
@click.option("--bops-weight", type=float, default=BLoRAConfig.bops_weight,
              help="blora: the BOP price, loss per 100% of fp32 BOPs (with a budget: its starting value).")
@click.option("--deploy", type=click.Choice(DEPLOY_TARGETS), default=BLoRAConfig.deploy,
              help="blora: merged (the adapter is folded into W0; rank is capacity and costs nothing) or adapter "
                   "(shipped unmerged on a shared base: W0 is quantized alone and the branch's BOPs per rank are "
                   "charged, so ranks are learned).")
@click.option("--weight-bits", callback=_bits_callback, default=_widths(BLoRAConfig.weight_bits),
              help="blora: allowed weight widths (consecutive doublings of 2,4,8,16,32).")
@click.option("--act-bits", callback=_bits_callback, default=_widths(BLoRAConfig.act_bits),
              help="blora: allowed activation widths (consecutive doublings of 4,8,16,32).")
@click.option("--init-weight-bits", type=int, default=BLoRAConfig.init_weight_bits,
              help="blora: initial weight width.")
@click.option("--init-act-bits", type=int, default=BLoRAConfig.init_act_bits,
              help="blora: initial activation width.")
@click.option("--embedding-bits", type=int, default=BLoRAConfig.embedding_bits,
              help="Embedding-table width: 4, 8 or 32 (lora keeps 32).")
@click.option("--gate-init", type=float, default=BLoRAConfig.gate_init,
              help="Initial log_alpha of the gates of the initial widths (wider levels start closed, at -1.5).")
@click.option("--per-tensor-weights", is_flag=True, help="One weight range per tensor instead of per output channel.")
@click.option("--bops-seq-len", type=int,
              help=f"Sequence length T at which MACs and BOPs are counted. [default: {DEFAULT_SEQ_LEN}, or the "
                   "model's position limit if smaller]")
# optimisation
@click.option("--epochs", type=float, default=OptimSpec.epochs,
              help="Training epochs (ignored when --max-steps is given).")
@click.option("--max-steps", type=int, help="Training steps (overrides --epochs).")
@click.option("--batch-size", type=int, default=OptimSpec.batch_size,
              help="Global batch size (split across processes).")
@click.option("--eval-batch-size", type=int, default=TrainConfig.eval_batch_size, help="Validation batch size.")
@click.option("--lr", type=float, default=OptimSpec.lr, help="Learning rate of LoRA factors and the head.")
@click.option("--range-lr", type=float, default=OptimSpec.range_lr,
              help="Learning rate of the quantizer ranges (with --relative-ranges: about this fraction of the range "
                   "per step).")
@click.option("--weight-decay", type=float, default=OptimSpec.weight_decay,
              help="AdamW weight decay (LoRA factors and head only).")
@click.option("--max-grad-norm", type=float, default=OptimSpec.max_grad_norm, help="Gradient clipping norm (0: off).")
@click.option("--warmup-steps", type=int, help="Linear learning-rate warm-up steps (overrides --warmup-ratio).")
@click.option("--warmup-ratio", type=float, default=OptimSpec.warmup_ratio, help="Warm-up as a fraction of all steps.")
@click.option("--gate-optimizer", type=click.Choice(GATE_OPTIMIZERS), default=OptimSpec.gate_optimizer,
              help="sgd: a gate's step follows its gradient, so the BOP price acts as a price; adam: every gate "
                   "moves about its learning rate per step (the first implementation's choice).")
@click.option("--gate-lr", type=float, default=OptimSpec.gate_lr, help="Learning rate of the gates' log_alpha.")
@click.option("--gate-momentum", type=float, default=OptimSpec.gate_momentum, help="Momentum of the gates' SGD.")
@click.option("--price-lr", type=float, default=OptimSpec.price_lr,
              help="With a budget: step of the price's dual ascent, price += price_lr x (BOP fraction / budget - 1).")
@click.option("--budget-mode", type=click.Choice(BUDGET_MODES), default=OptimSpec.budget_mode,
              help="cap: the budget is an upper bound (the price stays >= 0); target: the price may turn negative "
                   "and reopen gates, so the model uses its budget.")
@click.option("--gate-warmup-ratio", type=float, default=OptimSpec.gate_warmup_ratio,
              help="Share of the steps before the gates learn, so widths are decided after the adapters learned.")
@click.option("--fixed-gate-ratio", type=float, default=OptimSpec.fixed_gate_ratio,
              help="blora: share of the steps at the end with the gates frozen at their test-time values (phase 2), "
                   "so training ends on the exported graph.")
@click.option("--phase2-lr", callback=_optional_float, default=str(OptimSpec.phase2_lr).lower(),
              help="Phase 2's restarted learning rate as a fraction of --lr; 'none' (default): one decay over the "
                   "whole run, so phase 2 continues on its tail.")
# recipe switches
@click.option("--gate-sampling/--straight-through-gates", default=BLoRAConfig.gate_sampling,
              help="Sample hard-concrete gates in training, or run the test-time gates with straight-through "
                   "gradients.")
@click.option("--hard-off/--no-hard-off", default=BLoRAConfig.hard_off,
              help="A gate at or below log_alpha -2 is exactly 0 and the levels above it are skipped.")
@click.option("--affine-activations/--symmetric-activations", default=BLoRAConfig.affine_activations,
              help="Activation grids: affine with a zero point (fits one-sided inputs), or symmetric signed.")
@click.option("--relative-ranges/--absolute-ranges", default=BLoRAConfig.relative_ranges,
              help="Learn range ends relative to their scale (log-parameterised) or in absolute units.")
@click.option("--frozen-weight-grad-rows", type=float, default=BLoRAConfig.frozen_weight_grad_rows,
              help="blora: share of the token rows (drawn by gradient size) that estimate the gradient of the frozen "
                   "weights, which only their quantizers learn from; 1: the exact gradient (slower steps).")
@click.option("--calibration", type=click.Choice(CALIBRATIONS), default=BLoRAConfig.calibration,
              help="Activation range initialisation: least quantization error (mse) or max-abs.")
@click.option("--calibration-batches", type=int, default=OptimSpec.calibration_batches,
              help="Training batches used to set activation ranges.")
@click.option("--seed", type=int, default=OptimSpec.seed,
              help="Random seed (initialisation, data order, gate samples).")
# bookkeeping
@click.option("--eval-steps", type=int, help="Evaluate every N steps (default: once per epoch) and at the end.")
@click.option("--save-steps", type=int, default=TrainConfig.save_steps, help="Save resume state every N steps.")
@click.option("--logging-steps", type=int, default=TrainConfig.logging_steps,
              help="Write a metrics.jsonl line every N steps.")
@click.option("--device", default=TrainConfig.device,
              help="auto (cuda if available), cpu or cuda. CUDA trains under bf16 autocast.")
@click.option("--compile", type=click.Choice(COMPILE), default=TrainConfig.compile,
              help="Fuse the quantizers' elementwise maths with torch.compile on CPU (same values, ~2x faster steps; "
                   "the first step compiles for ~30 s). auto: when a C++ compiler is on PATH.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its latest state (OUTPUT_DIR.state).")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint or interrupted run's state.")
@click.option("--config", "config_file", type=click.Path(),
              help="JSON file of options (same names, - or _); flags given on the command line override it.")
@click.pass_context
@user_errors
def train_command(ctx: click.Context, **params) -> None:
    """Fine-tune MODEL on TASK with B-LoRA (or a baseline) and write a checkpoint for `compress`.

    \b
    Examples:
      blora-export train --model bert-base-uncased --task sst2 --data-dir glue/SST-2 --output-dir ckpt
      blora-export train --model DIR --task classification --train-file train.csv \\
          --validation-file dev.csv --text-column review --label-column stars --output-dir ckpt
      torchrun --nproc_per_node 2 $(which blora-export) train ...   (data parallel)
    """
    from train import run

    params = merge_config_file(ctx, params)
    missing = [f"--{name.replace('_', '-')}" for name in ("model", "task", "output_dir") if not params.get(name)]
    if missing:
        raise UserError(f"missing required option(s) {', '.join(missing)} (on the command line or in --config)")
    cfg = TrainConfig.from_flags(params)
    try:
        summary = run(cfg)
    except KeyboardInterrupt:
        if (ctx.find_root().obj or {}).get("debug"):
            raise
        interrupted(cfg)
    if summary:
        click.echo(f"checkpoint written to {cfg.output_dir}")


def interrupted(cfg) -> None:
    """Ctrl-C / SIGINT: one line saying whether and how the run can be resumed; exit status 130."""
    from train.state import snapshot_step

    step = snapshot_step(cfg.state_dir)
    if step is None:
        message = ("interrupted before the first resume snapshot (saved every --save-steps); nothing to resume: "
                   "run the same command again to start over")
    else:
        message = (f"interrupted; the run's state at step {step} is in {cfg.state_dir}: run the same command with "
                   "--resume to continue")
    click.echo(f"\nInterrupted: {message}", err=True)
    ctx = click.get_current_context()
    ctx.exit(130)


def merge_config_file(ctx: click.Context, params: dict) -> dict:
    """Options from --config FILE, except those given explicitly on the command line (or by environment)."""
    path = params.get("config_file")
    if not path:
        return params
    data = read_config_file(path)
    by_name = {p.name: p for p in ctx.command.params}
    merged = dict(params)
    for key, value in data.items():
        name = key.lstrip("-").replace("-", "_")
        if name not in by_name or name == "config_file":
            raise UserError(f"--config {path}: unknown option {key!r}; use the names of `blora-export train --help`")
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue  # an explicit flag beats the file
        param = by_name[name]
        if value is not None and not _JSON_KINDS[_json_kind(param)](value):
            raise UserError(f"--config {path}: {key} must be {_json_kind(param)}, got {json.dumps(value)[:40]}")
        if name in ("weight_bits", "act_bits"):  # a JSON list of widths
            merged[name] = _bits(value)
            continue
        if name == "lora_targets" and isinstance(value, list):  # a JSON list of module names
            value = ",".join(value)
        try:
            value = None if value is None else param.type_cast_value(ctx, value)
        except click.BadParameter as e:
            raise UserError(f"--config {path}: {key}: {e.format_message()}") from None
        except OverflowError:  # an integer too large for a float
            raise UserError(f"--config {path}: {key} is out of range, got {json.dumps(value)[:40]}") from None
        merged[name] = param.callback(ctx, param, value) if param.callback and value is not None else value
    return merged


def read_config_file(path: str) -> dict:
    """The JSON object of --config FILE (a regular file: reading a pipe could block forever)."""
    if not Path(path).is_file():
        what = "is a directory" if Path(path).is_dir() else "is not a regular file" if Path(path).exists() \
            else "does not exist"
        raise UserError(f"--config {path} {what}; pass a JSON file of options")

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) < len(keys):
            raise UserError(f"--config {path} gives option {next(k for k in keys if keys.count(k) > 1)!r} twice")
        return dict(pairs)

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"), object_pairs_hook=no_duplicates)
    except (OSError, ValueError) as e:  # JSONDecodeError, UnicodeDecodeError, too many digits: ValueErrors
        raise UserError(f"cannot read --config {path}: {e}") from None
    except RecursionError:
        raise UserError(f"--config {path} nests JSON too deeply; it must hold one object of option values") \
            from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path} must hold a JSON object of option names and values")
    return data


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The JSON values each kind of option takes: no bool for a number, no 2.5 for an integer, no list for one value.
_JSON_KINDS = {
    "true or false": lambda v: isinstance(v, bool),
    "a list of integers": lambda v: isinstance(v, str) or isinstance(v, list) and all(map(_is_int, v)),
    "a name or a list of names": lambda v: isinstance(v, str) or isinstance(v, list) and all(
        isinstance(t, str) for t in v),
    "a number or \"none\"": lambda v: isinstance(v, str) or _is_int(v) or isinstance(v, float),
    "an integer": _is_int,
    "a number": lambda v: _is_int(v) or isinstance(v, float),
    "a string": lambda v: isinstance(v, str),
}


def _json_kind(param: click.Parameter) -> str:
    if getattr(param, "is_flag", False):
        return "true or false"
    if param.name in ("weight_bits", "act_bits"):
        return "a list of integers"
    if param.name == "lora_targets":
        return "a name or a list of names"
    if param.callback is _optional_float:
        return "a number or \"none\""
    if isinstance(param.type, click.types.IntParamType):
        return "an integer"
    if isinstance(param.type, click.types.FloatParamType):
        return "a number"
    return "a string"
