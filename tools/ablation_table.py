"""One table from several tools/bench_methods.py outputs that differ only in --train-args (an ablation):
each row's B-LoRA metric per seed, its mean +- std, and the paired difference against the first output's
seeds (the baseline), with the whole-model BOPs.

    python tools/ablation_table.py default=bench/default warmup0=bench/warmup0 sampling=bench/sampling ...
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import click


def _blora(results: dict) -> tuple[str, dict]:
    names = [n for n in results["summary"] if n.startswith("blora@")]
    if len(names) != 1:
        raise click.UsageError(f"expected one B-LoRA method per output, found {names}")
    return names[0], results["summary"][names[0]]


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"


def table(outputs: dict[str, dict]) -> str:
    (base_name, base), *_ = outputs.items()
    seeds = base["config"]["seeds"]
    base_torch = _blora(base)[1]["metric_torch"]["values"]
    lines = [f"Ablation, {base['config']['label']}, {base['config']['steps']} steps, seeds {seeds}; difference: "
             f"paired by seed against {base_name} (PyTorch metric, deterministic gates)", "",
             "| run | train args | PyTorch | onnxruntime | per seed (PyTorch) | vs baseline | BOPs whole |",
             "|---|---|---|---|---|---|---|"]
    for name, results in outputs.items():
        if results["config"]["seeds"] != seeds or results["config"]["steps"] != base["config"]["steps"]:
            raise click.UsageError(f"{name} ran other seeds or steps than {base_name}")
        _, summary = _blora(results)
        torch_values = summary["metric_torch"]["values"]
        diff = statistics.mean(a - b for a, b in zip(torch_values, base_torch, strict=True))
        per_seed = " / ".join(f"{100 * v:.1f}" for v in torch_values)
        bops = 100 * (1 - summary["bops_whole"]["mean"])
        lines.append(f"| {name} | `{results['config']['train_args'] or '(defaults)'}` | {_mean_std(torch_values)} | "
                     f"{_mean_std(summary['metric_onnx']['values'])} | {per_seed} | {100 * diff:+.1f} | "
                     f"{bops:.1f}% |")
    return "\n".join(lines)


@click.command()
@click.argument("runs", nargs=-1, required=True)
def main(runs: tuple[str, ...]) -> None:
    """RUNS: NAME=OUT for each bench_methods output, the baseline first."""
    outputs = {}
    for item in runs:
        name, _, path = item.partition("=")
        results = Path(path) / "results.json"
        if not results.is_file():
            raise click.UsageError(f"{results} does not exist (run tools/bench_methods.py {path} first)")
        outputs[name] = json.loads(results.read_text(encoding="utf-8"))
        if "train_args" not in outputs[name]["config"]:
            raise click.UsageError(f"{results} predates the train_args record: rerun its bench_methods command "
                                   "(finished runs are reused)")
    click.echo(table(outputs))


if __name__ == "__main__":
    main()
