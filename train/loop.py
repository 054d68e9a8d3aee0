"""The training loop: one optimizer step per global batch, the phases of B-LoRA, logging, periodic evaluation and
resume snapshots.

Randomness is reseeded every step from (seed, step): dropout and the token rows of the frozen weights' sampled
gradient from (seed, step, rank), gate samples (the sampled ablation) from a dedicated generator seeded from
(seed, step) alone, identically on every rank. So all ranks apply the same gate masks, the all-reduced gradient
is the full batch's gradient (its frozen-weight part a sum of per-shard estimates), and a resumed run draws
exactly what the uninterrupted run drew.

While the gates learn (train/schedules.py), the loss is task + price x E[BOPs] / BOPs_fp32 and the price adapts
to the budget (train/price.py). At the end of phase 1 the budget is enforced (train/budget.py) and the gates
freeze for phase 2.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from blora_export import gates
from blora_export.bops import MacProfile
from blora_export.config import BLoRAConfig
from blora_export.data import Task
from blora_export.gated_model import deterministic_bop_fraction, expected_bop_fraction

from .batching import Encoded, Schedule, collate, shard
from .budget import enforce_budget
from .distributed import Dist
from .errors import TrainError
from .evaluate import evaluate, loss_sum
from .optim import Optimizers, freeze_gates, set_gates_learning
from .options import TrainConfig
from .price import Price
from .runlog import RunLog
from .schedules import Phases
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
    optimizer: Optimizers
    dist: Dist
    log: RunLog
    phases: Phases
    price: Price
    budget_loss: Callable[[nn.Module], float]  # the loss the budget guarantee ranks closures by
    data_record: dict = field(default_factory=dict)  # what a snapshot records about the data order
    closed_by_budget: list[dict] = field(default_factory=list)

    @property
    def total_steps(self) -> int:
        return self.phases.total

    @property
    def learns_gates(self) -> bool:
        return self.optimizer.gates is not None


def _seed(seed: int, step: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1, np.uint64)[0] >> 1)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(run: Run, step: int, gate_generator: torch.Generator) -> dict[str, float]:
    cfg, dist, model = run.cfg, run.dist, run.model
    learning = run.learns_gates and run.phases.gates_learn(step)
    run.optimizer.set_lr(run.phases.lr_factor(step))
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
    penalty = torch.zeros(())
    if learning and dist.is_main:  # counted once: the all-reduce below sums over ranks
        penalty = run.price.value * expected_bop_fraction(model, run.profile)
        loss = loss + penalty

    run.optimizer.zero_grad()
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # same tensor list on every rank, even where a range got no gradient
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    stats = task_sum.detach().float().reshape(1)
    dist.all_reduce_sum([p.grad for p in params] + [stats])
    if not torch.isfinite(stats).all():  # every rank sees the all-reduced loss: all stop together
        raise TrainError(f"training diverged at step {step + 1}: the loss is {float(stats)}; nothing was saved: "
                         "lower --lr, --range-lr or --gate-lr and train again")
    run.optimizer.step(learning)
    if learning:
        run.price.update(step + 1, deterministic_bop_fraction(model, run.profile))
    return {"task_loss": float(stats) / count, "penalty": float(penalty.detach())}


def end_phase_one(run: Run) -> None:
    """Enforce the budget (rank 0 decides, every rank gets its gates) and freeze the gates for phase 2."""
    if run.blora.bops_budget is not None and run.learns_gates:
        if run.dist.is_main:
            run.closed_by_budget = enforce_budget(run.model, run.profile, run.blora.bops_budget, run.budget_loss)
        run.dist.broadcast(run.optimizer.gate_params)
    freeze_gates(run.optimizer.gate_params)


def train(run: Run, start_step: int) -> dict[str, float]:
    """Steps start_step .. total_steps - 1; returns timing. Rank 0 logs, evaluates and snapshots."""
    from tqdm.auto import tqdm

    dist, model, phases = run.dist, run.model, run.phases
    gate_generator = torch.Generator(device=dist.device)
    interrupt_after = int(os.environ.get(INTERRUPT_ENV, "0")) or None
    set_gates_learning(run.optimizer, phases.gates_learn(start_step))
    if start_step > phases.main:
        freeze_gates(run.optimizer.gate_params)  # a resumed phase 2 (the snapshot holds the frozen values)
    model.train()
    bar = tqdm(total=run.total_steps, initial=start_step, desc="train", disable=not dist.is_main,
               dynamic_ncols=True)
    book = _Bookkeeper(run, bar, start_step)
    step_seconds = 0.0
    try:  # the bar is closed before an interruption's message is printed
        for step in range(start_step, run.total_steps):
            if step == phases.gate_start:
                set_gates_learning(run.optimizer, phases.gates_learn(step))
            if step == phases.main:
                end_phase_one(run)
            tic = time.perf_counter()
            result = train_step(run, step, gate_generator)
            step_seconds += time.perf_counter() - tic
            bar.update(1)
            if dist.is_main:
                book.after_step(step + 1, result)
            if interrupt_after is not None and step + 1 == interrupt_after:
                raise KeyboardInterrupt(f"test interrupt after step {step + 1}")
        if phases.main == phases.total and start_step <= phases.main:
            end_phase_one(run)  # no phase 2: the budget still holds for the export
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
                          run.data_record, {"price": run.price.to_dict(), "closed_by_budget": run.closed_by_budget})

    def _log(self, done: int) -> None:
        run = self.run
        with torch.no_grad():
            expected = float(expected_bop_fraction(run.model, run.profile))
        fraction = deterministic_bop_fraction(run.model, run.profile)
        task_loss = sum(r["task_loss"] for r in self.window) / len(self.window)
        penalty = sum(r["penalty"] for r in self.window) / len(self.window)
        self.window = []
        run.log.append({"step": done, "epoch": round(run.schedule.epoch(done), 4), "task_loss": task_loss,
                        "penalty": penalty, "loss": task_loss + penalty, "lr": run.optimizer.lr,
                        "price": run.price.value, "bop_fraction": fraction, "expected_bop_fraction": expected})
        postfix = {"loss": f"{task_loss:.4f}"}
        if self.latest_metric is not None:
            postfix[run.task.metric] = f"{self.latest_metric:.4f}"
        postfix["bops"] = f"{100 * fraction:.1f}%"
        if run.learns_gates:
            postfix["price"] = f"{run.price.value:.3g}"
        self.bar.set_postfix(postfix)
