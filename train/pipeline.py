"""`run(TrainConfig)`: data -> base model -> MAC profile and fingerprint -> inject -> calibrate -> train ->
evaluate -> checkpoint. The one library function behind `blora-export train`.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from blora_export import data, fused, roles
from blora_export.atomic import OutputIsInputError, OutputNotWritableError, check_not_an_input, check_writable
from blora_export.base_model import check_model_path, is_local, load_base_model, load_errors, max_positions
from blora_export.checkpoint import META_FILE, CheckpointMeta, save_checkpoint
from blora_export.errors import UserError, first_line
from blora_export.gated_model import calibrate
from blora_export.inject import prepare
from blora_export.targets import encoder_linears, resolve_targets

from . import distributed, loop, report
from .batching import Schedule, collate, encode
from .budget import least_fraction
from .errors import TrainError
from .evaluate import evaluate, loss_sum
from .optim import Optimizers
from .options import TrainConfig
from .price import Price
from .runlog import LOG_FILE, RunLog
from .schedules import Phases
from .state import (
    SNAPSHOT,
    check_finite,
    check_optimizer_shapes,
    has_snapshot,
    load_snapshot,
    load_trained,
    restore_rng,
    restoring,
)

VALIDATION_EXAMPLES = 256
BUDGET_BATCHES = 4  # fixed training batches the budget guarantee measures closures on
MODEL_HINT = "pass --model a Hugging Face model name or a directory written by save_pretrained (config and tokenizer)"


def run(cfg: TrainConfig) -> dict:
    """Train as configured and write the checkpoint (rank 0); returns the training summary."""
    cfg.validate()
    resume = check_output(cfg)
    dist = distributed.setup(cfg.device)
    if cfg.compile != "auto":  # auto: the process's setting (by default, compile when a C++ compiler is found)
        fused.set_enabled(cfg.compile == "on")
    had_state = cfg.state_dir.exists()
    try:
        return _run(cfg, dist, resume)
    except UserError:
        # A failed run leaves nothing behind: the state directory it made goes unless it holds a snapshot to
        # --resume from (a KeyboardInterrupt keeps it: that is what --resume continues).
        if dist.is_main and not had_state and not has_snapshot(cfg.state_dir):
            shutil.rmtree(cfg.state_dir, ignore_errors=True)
        raise
    finally:
        dist.close()


def check_output(cfg: TrainConfig) -> bool:
    """Refuse to clobber a checkpoint or an interrupted run by accident; returns whether to resume."""
    out = Path(cfg.output_dir)
    try:  # before anything resolves the path: Path.resolve raises RuntimeError on a symbolic-link loop
        os.path.realpath(out, strict=True)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise TrainError(f"cannot write --output-dir {out} ({e.strerror}); choose another --output-dir") \
                from None
    root = cfg.state_dir
    inputs = {"model directory": cfg.model if is_local(cfg.model) else None, "data directory": cfg.data.data_dir,
              "training file": cfg.data.train_file, "validation file": cfg.data.validation_file,
              "config file": cfg.config_file}
    try:
        check_not_an_input(out, inputs)
        check_not_an_input(root, inputs, "--output-dir's state directory")
    except OutputIsInputError as e:
        raise TrainError(str(e)) from None
    if out.exists() and not out.is_dir():
        raise TrainError(f"--output-dir {out} is a file; pass a directory")
    try:
        check_writable(out)
    except OutputNotWritableError as e:
        raise TrainError(str(e)) from None
    snapshot = has_snapshot(root)
    if cfg.resume and not snapshot:
        if (out / META_FILE).is_file():
            raise TrainError(f"{out} is already a complete checkpoint: nothing to resume")
        raise TrainError(f"no resume state in {root}: start without --resume (state is saved every --save-steps)")
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        if (out / META_FILE).is_file():
            raise TrainError(f"{out} already holds a complete checkpoint; pass --overwrite to replace it")
        raise TrainError(f"{out} exists and is not a checkpoint; choose another --output-dir or pass --overwrite")
    if snapshot and not (cfg.resume or cfg.overwrite):
        raise TrainError(f"{root} holds the state of an interrupted run; pass --resume to continue it "
                         "or --overwrite to start over")
    return cfg.resume


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _load_model(cfg: TrainConfig, labels: list[str], problem_type: str) -> nn.Module:
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our own bar is the one to watch
    try:
        return load_base_model(cfg.model, len(labels), dict(enumerate(labels)), problem_type,
                               trust_remote_code=cfg.trust_remote_code)
    except pickle.UnpicklingError:  # torch's weights-only loader met more than tensors: it never runs that code
        raise TrainError(f"cannot load model {cfg.model!r}: its pickled weights (pytorch_model.bin) hold more than "
                         "tensors and were refused; use a model saved as safetensors") from None
    except load_errors() as e:
        raise TrainError(f"cannot load model {cfg.model!r}: {first_line(e)}; {MODEL_HINT}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _load_tokenizer(cfg: TrainConfig):
    from transformers import AutoTokenizer

    check_model_path(cfg.model)
    try:
        return AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    except load_errors() as e:
        raise TrainError(f"cannot load a tokenizer for {cfg.model!r}: {first_line(e)}; {MODEL_HINT}") from None


def _check_model(cfg: TrainConfig, model: nn.Module, tokenizer) -> None:
    """What the model must take before training starts (later, each is an IndexError or an allocation failure)."""
    limit = max_positions(model)
    if limit and cfg.data.max_seq_length > limit:
        raise TrainError(f"--max-seq-length {cfg.data.max_seq_length} exceeds the model's {limit} positions")
    rows = getattr(model.get_input_embeddings(), "num_embeddings", None)
    if rows and len(tokenizer) > rows:
        raise TrainError(f"--model {cfg.model}: its tokenizer has {len(tokenizer)} tokens but its embedding only "
                         f"{rows} rows (config.vocab_size); use the tokenizer the model was trained with")
    encoder_linears(model)  # raises, naming the architecture, if it has no Linear to adapt
    linears = [model.get_submodule(name) for name in resolve_targets(model, cfg.method.targets)]
    full = max(min(m.in_features, m.out_features) for m in linears)
    if cfg.method.max_rank > full:
        raise TrainError(f"--max-rank {cfg.method.max_rank} exceeds the full rank ({full}) of every adapted layer "
                         f"of {cfg.model}; pass --max-rank {full} or less")


def _run(cfg: TrainConfig, dist: distributed.Dist, resume: bool) -> dict:
    dataset = data.load(cfg.data)
    if len(dataset.train) < dist.world_size:
        raise TrainError(f"{len(dataset.train)} training examples cannot be shared by {dist.world_size} processes")
    tokenizer = _load_tokenizer(cfg)
    train_data = encode(tokenizer, dataset.train, cfg.data.max_seq_length)
    eval_data = encode(tokenizer, dataset.validation, cfg.data.max_seq_length)
    model, blora, injection, profile, base_fingerprint = _prepare_model(cfg, dataset, tokenizer)
    model.to(dist.device)

    schedule = Schedule(len(train_data), cfg.optim.batch_size, cfg.optim.seed, min_batch=dist.world_size)
    total = cfg.optim.max_steps or schedule.steps_for(cfg.optim.epochs)
    data_record = {"n_train": len(train_data), "steps_per_epoch": schedule.steps_per_epoch,
                   "order": "numpy default_rng([seed, epoch]).permutation(n_train)"}
    fixed_batches = [collate(tokenizer, train_data, schedule.indices(i), dataset.task.is_regression)
                     for i in range(min(cfg.optim.calibration_batches, schedule.steps_per_epoch))]
    snapshot = load_snapshot(cfg.state_dir) if resume else None
    if snapshot is not None:
        _check_snapshot(cfg, snapshot, data_record, total)
        load_trained(model, injection.head, snapshot.tensors)
    elif blora.method != "lora":  # lora's quantizers are identities: nothing to calibrate
        # the same full batches on every rank: identical ranges
        calibrate(model, [{k: v.to(dist.device) for k, v in b.items() if k != "labels"} for b in fixed_batches])
    dist.broadcast([p for _, _, p in roles.trainable(model, injection.head)])

    optimizer = Optimizers(model, cfg.optim, injection.head)
    _check_budget(blora, model, profile, optimizer)
    if snapshot is not None:
        with restoring(cfg.state_dir):
            optimizer.load_state_dict(snapshot.optimizer)
            restore_rng(snapshot.rng)
            price = Price.from_dict(snapshot.extras["price"]) if "price" in snapshot.extras else None
            closed = [dict(c) for c in snapshot.extras.get("closed_by_budget", [])]
        check_optimizer_shapes([o for o in (optimizer.main, optimizer.gates) if o is not None], cfg.state_dir)
    log = RunLog(cfg.state_dir, dist.is_main)
    if dist.is_main and snapshot is None:
        shutil.rmtree(cfg.state_dir / SNAPSHOT, ignore_errors=True)  # --overwrite: the old run's state goes
    log.start(snapshot.step if snapshot else None)
    if snapshot is None or price is None:
        price = Price(blora.bops_weight, blora.bops_budget, cfg.optim.price_lr,
                      0.0 if cfg.optim.budget_mode == "cap" else None)
    phases = Phases.plan(total, optimizer.gates is not None, cfg.optim)
    run_ = loop.Run(cfg, blora, model, injection.head, tokenizer, train_data, eval_data, dataset.task, profile,
                    schedule, optimizer, dist, log, phases, price,
                    _fixed_batch_loss(fixed_batches[:BUDGET_BATCHES], dataset.task, dist.device), data_record,
                    closed if snapshot else [])
    tic = time.perf_counter()
    timing = loop.train(run_, snapshot.step if snapshot else 0)
    timing.update(train_seconds=time.perf_counter() - tic, resumed_from_step=snapshot.step if snapshot else None)

    result = {}
    if dist.is_main:
        meta = CheckpointMeta(
            base_model=str(Path(cfg.model).resolve()) if is_local(cfg.model) else cfg.model,
            base_fingerprint=base_fingerprint, blora=blora.to_dict(), adapted=injection.adapted,
            quantized=injection.quantized, embeddings=injection.embeddings, head=injection.head,
            labels=dataset.labels, mac_profile=profile.to_dict(), task=cfg.data.task,
            problem_type=dataset.task.problem_type, max_seq_length=cfg.data.max_seq_length,
            base_revision=getattr(model.config, "_commit_hash", None), options=cfg.to_dict())
        result = _finish(run_, meta, dataset, timing)
    dist.barrier()
    return result


def _check_budget(blora, model: nn.Module, profile, optimizer: Optimizers) -> None:
    if blora.bops_budget is None or optimizer.gates is None:
        return
    least = least_fraction(model, profile)
    if least > blora.bops_budget:
        raise TrainError(f"--bops-budget {blora.bops_budget:g} is below the least this model can reach with the "
                         f"allowed widths ({least:.4f} of its fp32 BOPs); raise the budget or allow narrower widths "
                         f"(e.g. --weight-bits 2,4,8,16,32 --act-bits 4,8,16,32)")


def _fixed_batch_loss(batches: list[dict], task, device: torch.device):
    """The task loss of a model as it is (eval mode: the exported model) on a few fixed training batches."""

    @torch.no_grad()
    def loss(model: nn.Module) -> float:
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        try:
            for batch in batches:
                labels = batch["labels"].to(device)
                logits = model(**{k: v.to(device) for k, v in batch.items() if k != "labels"}).logits
                total += float(loss_sum(logits, labels, task.is_regression))
                count += len(labels)
        finally:
            model.train(was_training)
        return total / max(1, count)

    return loss


def _prepare_model(cfg: TrainConfig, dataset, tokenizer):
    """The base model, fingerprinted and profiled, then injected (inject.prepare owns that order)."""
    _seed_everything(cfg.optim.seed)  # the head's and lora_A's initialisation
    model = _load_model(cfg, dataset.labels, dataset.task.problem_type)
    _check_model(cfg, model, tokenizer)
    prepared = prepare(model, cfg.method)
    roles.trainable(model, prepared.injection.head)  # raises if a backbone tensor trains
    return model, prepared.config, prepared.injection, prepared.profile, prepared.fingerprint


def _finish(run_: loop.Run, meta: CheckpointMeta, dataset, timing: dict) -> dict:
    """Rank 0: final evaluation with deterministic gates, the checkpoint (log included), the summary table."""
    cfg, schedule, total = run_.cfg, run_.schedule, run_.total_steps
    validation = evaluate(run_.model, run_.tokenizer, run_.eval_data, run_.task, cfg.eval_batch_size,
                          run_.dist.device)
    run_.log.append({"step": total, "epoch": round(schedule.epoch(total), 4), "eval": validation})
    result = report.summary(run_.model, run_.profile, validation, {
        "task": cfg.data.task, "method": cfg.method.method, "metric": run_.task.metric, "steps": total,
        "epochs": round(schedule.epoch(total), 4), "train_seconds": timing["train_seconds"],
        "seconds_per_step": timing["seconds_per_step"], "steps_this_session": timing["steps_run"],
        "resumed_from_step": timing["resumed_from_step"], "world_size": run_.dist.world_size,
        "device": str(run_.dist.device), "train_examples": len(run_.train_data),
        "validation_examples": len(run_.eval_data), "skipped_rows": dataset.skipped,
        "phases": {"gates_learn_from": run_.phases.gate_start, "gates_frozen_from": run_.phases.main,
                   "total": run_.phases.total},
        "price": {"budget": run_.price.budget, "final": run_.price.value, "path": run_.price.path,
                  "closed_by_budget": run_.closed_by_budget} if run_.learns_gates else None})
    check_finite(run_.model, run_.head, total)
    try:
        save_checkpoint(cfg.output_dir, run_.model, meta, run_.tokenizer, result,
                        [e.to_dict() for e in dataset.validation[:VALIDATION_EXAMPLES]],
                        overwrite=Path(cfg.output_dir).exists(), extra_files={LOG_FILE: run_.log.text()})
    except UserError:
        raise
    except OSError as e:  # a full disk, a lost mount: atomic_directory has removed the partial copy
        raise TrainError(f"cannot write the checkpoint {cfg.output_dir} ({e.strerror or e}); nothing was written: "
                         "free space or choose another --output-dir, then train again") from None
    shutil.rmtree(cfg.state_dir, ignore_errors=True)  # the run is complete: its working state goes
    print(report.table(result), flush=True)
    return result


def _check_snapshot(cfg: TrainConfig, snapshot, data_record: dict, total: int) -> None:
    if not 0 < snapshot.step < total:  # resuming there would write a checkpoint that lies about its steps
        raise TrainError(f"the resume state in {cfg.state_dir} is damaged (step {snapshot.step}, but this run has "
                         f"{total} steps); pass --overwrite to start over")
    changed = _changed(cfg.resume_key(), snapshot.options)
    if changed:
        raise TrainError(f"--resume with other options than the interrupted run ({', '.join(changed)}); "
                         "use the same options or pass --overwrite to start over")
    if snapshot.data != data_record:
        raise TrainError("--resume found other training data than the interrupted run had; "
                         "use the same data or pass --overwrite to start over")


def _changed(mine: dict, theirs: dict, prefix: str = "") -> list[str]:
    """Dotted names of the options that differ between two (nested) option dictionaries."""
    out = []
    for key in sorted(set(mine) | set(theirs)):
        a, b = mine.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(prefix + key)
    return out
