"""The training loop: one optimizer step per global batch, logging, periodic evaluation and resume snapshots.

Randomness is reseeded every step from (seed, step): dropout from (seed, step, rank), gate samples from a
dedicated generator seeded from (seed, step) alone, identically on every rank. So all ranks apply the same
gate masks and the all-reduced gradient is the full batch's gradient, and a resumed run draws exactly what
the uninterrupted run drew.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from blora_export import gates
from blora_export.bops import MacProfile
from blora_export.config import BLoRAConfig
from blora_export.data import Task
from blora_export.gated_model import expected_bops, regularizer

from .batching import Encoded, Schedule, collate, shard
from .distributed import Dist
from .evaluate import evaluate, loss_sum
from .optim import freeze_gates, set_lr
from .options import TrainConfig
from .runlog import RunLog
from .schedules import lr_factor, regularizer_factor
from .state import save_snapshot

# Test hook: stop as if interrupted (Ctrl-C) right after this step; used to prove that --resume is exact.
INTERRUPT_ENV = "BLORA_EXPORT_TEST_INTERRUPT_AFTER_STEP"


@dataclass
class Run:
    """Everything the loop works on, built once by pipeline.py."""

    cfg: TrainConfig
    blora: BLoRAConfig
    model: nn.Module
    head: list[str]
    tokenizer: object
    train_data: Encoded
    eval_data: Encoded
    task: Task
    profile: MacProfile
    schedule: Schedule
    optimizer: torch.optim.Optimizer
    dist: Dist
    log: RunLog
    main_steps: int  # steps with learned gates; then cfg.optim.fixed_gate_steps with frozen gates
    warmup_steps: int
    data_record: dict = field(default_factory=dict)  # what a snapshot records about the data order

    @property
    def total_steps(self) -> int:
        return self.main_steps + self.cfg.optim.fixed_gate_steps


def _seed(seed: int, step: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1, np.uint64)[0] >> 1)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def expected_reduction(model: nn.Module, profile: MacProfile) -> tuple[float, float]:
    with torch.no_grad():
        b = expected_bops(model, profile)
    return float(b["whole_model"]["reduction"]), float(b["adapted"]["reduction"])


def train_step(run: Run, step: int, gate_generator: torch.Generator) -> dict[str, float]:
    cfg, dist, model = run.cfg, run.dist, run.model
    set_lr(run.optimizer, lr_factor(step, run.warmup_steps, run.total_steps))
    torch.manual_seed(_seed(cfg.optim.seed, step, 1 + dist.rank))
    gate_generator.manual_seed(_seed(cfg.optim.seed, step, 0))

    full = collate(run.tokenizer, run.train_data, run.schedule.indices(step), run.task.is_regression)
    count = len(full["labels"])
    batch = {k: v.to(dist.device) for k, v in shard(full, dist.rank, dist.world_size).items()}
    labels = batch.pop("labels")
    with gates.sampling_generator(gate_generator), _autocast(dist.device):
        logits = model(**batch).logits
    task_sum = loss_sum(logits, labels, run.task.is_regression)
    loss = task_sum / count
    reg = torch.zeros(())
    if dist.is_main:  # counted once: the all-reduce below sums over ranks
        reg = regularizer(model, run.profile, run.blora) * regularizer_factor(step, cfg.optim.regularizer_warmup_steps)
        loss = loss + reg

    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # same tensor list on every rank, even where a range got no gradient
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    stats = task_sum.detach().float().reshape(1)
    dist.all_reduce_sum([p.grad for p in params] + [stats])
    if cfg.optim.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
    run.optimizer.step()
    return {"task_loss": float(stats) / count, "regularizer": float(reg.detach())}


def train(run: Run, start_step: int) -> dict[str, float]:
    """Steps start_step .. total_steps - 1; returns timing. Rank 0 logs, evaluates and snapshots."""
    from tqdm.auto import tqdm

    cfg, dist, model = run.cfg, run.dist, run.model
    gate_generator = torch.Generator(device=dist.device)
    interrupt_after = int(os.environ.get(INTERRUPT_ENV, "0")) or None
    if cfg.optim.fixed_gate_steps and start_step >= run.main_steps:
        freeze_gates(model)
    model.train()
    bar = tqdm(total=run.total_steps, initial=start_step, desc="train", disable=not dist.is_main,
               dynamic_ncols=True)
    book = _Bookkeeper(run, bar, start_step)
    step_seconds = 0.0
    try:  # the bar is closed before an interruption's message is printed
        for step in range(start_step, run.total_steps):
            if step == run.main_steps and cfg.optim.fixed_gate_steps:
                freeze_gates(model)
            tic = time.perf_counter()
            result = train_step(run, step, gate_generator)
            step_seconds += time.perf_counter() - tic
            bar.update(1)
            if dist.is_main:
                book.after_step(step + 1, result)
            if interrupt_after is not None and step + 1 == interrupt_after:
                raise KeyboardInterrupt(f"test interrupt after step {step + 1}")
    finally:
        bar.close()
    steps = run.total_steps - start_step
    return {"steps_run": steps, "step_seconds": step_seconds, "seconds_per_step": step_seconds / max(1, steps)}


class _Bookkeeper:
    """Rank 0's duties after a step: log lines, the progress bar, periodic evaluation, snapshots."""

    def __init__(self, run: Run, bar, start_step: int):
        self.run, self.bar, self.start_step = run, bar, start_step
        self.window: list[dict] = []
        self.latest_metric: float | None = None
        self.eval_every = run.cfg.eval_steps or run.schedule.steps_per_epoch  # default: once per epoch

    def after_step(self, done: int, result: dict[str, float]) -> None:
        run, cfg = self.run, self.run.cfg
        self.window.append(result)
        last = done == run.total_steps
        if done % cfg.logging_steps == 0 or last or done == 1:
            self._log(done)
        if done % self.eval_every == 0 and not last:  # the final evaluation is the pipeline's
            metrics = evaluate(run.model, run.tokenizer, run.eval_data, run.task, cfg.eval_batch_size,
                               run.dist.device)
            self.latest_metric = metrics[run.task.metric]
            run.log.append({"step": done, "epoch": round(run.schedule.epoch(done), 4), "eval": metrics})
        if cfg.save_steps and done % cfg.save_steps == 0 and not last:
            save_snapshot(run.log.path.parent, done, run.model, run.head, run.optimizer, cfg.resume_key(),
                          run.data_record)

    def _log(self, done: int) -> None:
        run = self.run
        whole, adapted = expected_reduction(run.model, run.profile)
        task_loss = sum(r["task_loss"] for r in self.window) / len(self.window)
        reg = sum(r["regularizer"] for r in self.window) / len(self.window)
        self.window = []
        run.log.append({"step": done, "epoch": round(run.schedule.epoch(done), 4), "task_loss": task_loss,
                        "regularizer": reg, "loss": task_loss + reg, "lr": run.optimizer.param_groups[0]["lr"],
                        "expected_bop_reduction": whole, "expected_adapted_bop_reduction": adapted})
        postfix = {"loss": f"{task_loss:.4f}", "reg": f"{reg:.3g}"}
        if self.latest_metric is not None:
            postfix[run.task.metric] = f"{self.latest_metric:.4f}"
        postfix["bops"] = f"-{100 * whole:.1f}%"
        self.bar.set_postfix(postfix)
