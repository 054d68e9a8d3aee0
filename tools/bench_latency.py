"""onnxruntime latency of exported models side by side, measured in one run: every setting (threads x batch) is
timed with the models interleaved (one run of each in turn), so drifting machine load hits every model alike;
the table gives the median per model and its ratio against the fp32 model and against quantize_dynamic.

    # the models of a tools/bench_methods.py output (fp32 LoRA, quantize_dynamic, quantize_static, W8A8 QAT,
    # every B-LoRA budget in the speed and the size profile) of one seed:
    python tools/bench_latency.py --bench OUT [--seed 0]
    # any models:
    python tools/bench_latency.py --model fp32=a/model.onnx --model quantize_dynamic=b/model.onnx ...
    # a checkpoint and its compress output, against the checkpoint's fp32 export and its quantize_dynamic:
    python tools/bench_latency.py --ckpt CKPT --out OUT

Options: --threads 1,2  --batches 8,1  --seq-len 128  --runs 15  --json FILE. Models written by
`blora-export compress` (a deploy.json beside them) run with the session options compress verified them with;
the others with onnxruntime's defaults.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np

FP32, DYNAMIC = "fp32", "quantize_dynamic"
# Pause before each timed run: onnxruntime's idle worker threads spin for a while after a run, and with the
# models interleaved the previous session's spinning threads would take a core from the one being timed (measured:
# fp32 at 2 threads x batch 1 read 64 ms interleaved without the pause, 28 ms with it).
SETTLE_SECONDS = 0.05
BENCH_MODELS = {"fp32": "lora/onnx-speed", "quantize_dynamic": "dynamic/onnx-speed",
                "quantize_static": "static/onnx-speed", "qat W8A8": "qat/onnx-speed"}


def fp32_onnx(ckpt: Path, work: Path) -> Path:
    """The checkpoint's architecture, fp32, exported by the torch.onnx path compress uses."""
    from transformers import AutoTokenizer

    from blora_export.checkpoint import load_checkpoint
    from blora_export.export.onnx_export import export_float, model_input_names
    from blora_export.inject import strip

    model, _ = load_checkpoint(ckpt)
    plain = strip(model).eval()
    names = model_input_names(plain, AutoTokenizer.from_pretrained(str(ckpt)))
    path = work / "fp32.onnx"
    path.write_bytes(export_float(plain, names).SerializeToString())
    return path


def dynamic_int8(fp32: Path, work: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = work / "dynamic.onnx"
    quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
    return path


def bench_models(out: Path, seed: int) -> dict[str, Path]:
    """The speed- and size-profile models of one seed of a bench_methods output."""
    runs = out / "runs" / f"seed{seed}"
    models = {name: runs / sub / "model.onnx" for name, sub in BENCH_MODELS.items()}
    for run in sorted(runs.glob("blora@*")):
        for profile in ("speed", "size"):
            models[f"{run.name} ({profile})"] = run / f"onnx-{profile}" / "model.onnx"
    return {k: p for k, p in models.items() if p.is_file()}


def session(path: Path, threads: int):
    import onnxruntime as ort

    from blora_export import runtime
    from blora_export.export.artifacts import AUDIT_FILE, DEPLOY_FILE

    ours = (path.parent / DEPLOY_FILE).is_file() and (path.parent / AUDIT_FILE).is_file()
    so = runtime.session_options(threads=threads) if ours else ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feed_for(sess, batch: int, seq_len: int, vocab: int = 20000) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feed = {}
    for inp in sess.get_inputs():
        if inp.name == "input_ids":
            feed[inp.name] = rng.integers(min(1000, vocab // 2), vocab, (batch, seq_len), dtype=np.int64)
        elif inp.name == "attention_mask":
            feed[inp.name] = np.ones((batch, seq_len), dtype=np.int64)
        else:
            feed[inp.name] = np.zeros((batch, seq_len), dtype=np.int64)
    return feed


def measure(models: dict[str, Path], threads: list[int], batches: list[int], seq_len: int, runs: int,
            vocab: int = 20000) -> dict[str, dict[str, float]]:
    """Median milliseconds per model for every setting: {"<threads>t x <batch>": {name: ms}}."""
    ms = {}
    for t in threads:
        sessions = {k: session(p, t) for k, p in models.items()}
        for batch in batches:
            feeds = {k: feed_for(s, batch, seq_len, vocab) for k, s in sessions.items()}
            times: dict[str, list[float]] = {k: [] for k in sessions}
            for k, s in sessions.items():  # warm-up
                s.run(None, feeds[k])
            for _ in range(runs):
                for k, s in sessions.items():
                    time.sleep(SETTLE_SECONDS)
                    start = time.perf_counter()
                    s.run(None, feeds[k])
                    times[k].append(time.perf_counter() - start)
            ms[f"{t}t x {batch}"] = {k: 1000 * statistics.median(v) for k, v in times.items()}
    return ms


def table(models: dict[str, Path], ms: dict[str, dict[str, float]], seq_len: int) -> str:
    """Markdown: size, then per setting the median ms, x fp32 and x quantize_dynamic (> 1: faster)."""
    sizes = {k: p.stat().st_size for k, p in models.items()}
    head = ["model", "MB", "size vs fp32"] + [f"{s}: ms / x fp32 / x dynamic" for s in ms]
    lines = [f"Latency at sequence length {seq_len} (median of interleaved runs; x: speed-up, > 1 is faster)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in models:
        cells = [k, f"{sizes[k] / 1e6:.1f}", f"{sizes[k] / sizes[FP32]:.3f}x" if FP32 in sizes else "-"]
        for setting in ms.values():
            fp32 = f"{setting[FP32] / setting[k]:.2f}x" if FP32 in setting else "-"
            dyn = f"{setting[DYNAMIC] / setting[k]:.2f}x" if DYNAMIC in setting else "-"
            cells.append(f"{setting[k]:.1f} / {fp32} / {dyn}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _vocab(models: dict[str, Path]) -> int:
    """The smallest vocabulary among the models' tokenizers next to them (ids must fit every model)."""
    from transformers import AutoTokenizer

    sizes = []
    for p in models.values():
        try:
            sizes.append(len(AutoTokenizer.from_pretrained(str(p.parent))))
        except (OSError, ValueError):
            continue
    return min(sizes, default=20000)


@click.command()
@click.option("--bench", "bench_out", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A tools/bench_methods.py output: time its models of --seed.")
@click.option("--seed", default=0, show_default=True)
@click.option("--model", "named", multiple=True, help="NAME=PATH of an ONNX model (repeatable).")
@click.option("--ckpt", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="With --out: a checkpoint, exported fp32 and by quantize_dynamic as the references.")
@click.option("--out", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Its compress output.")
@click.option("--threads", default="1,2", show_default=True)
@click.option("--batches", default="8,1", show_default=True)
@click.option("--seq-len", default=128, show_default=True)
@click.option("--runs", default=15, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the results as JSON.")
def main(bench_out, seed, named, ckpt, out, threads, batches, seq_len, runs, json_path) -> None:
    """Time ONNX models side by side (interleaved), against fp32 and quantize_dynamic."""
    with tempfile.TemporaryDirectory() as tmp:
        models: dict[str, Path] = {}
        if bench_out:
            models.update(bench_models(bench_out, seed))
        if ckpt and out:
            fp32 = fp32_onnx(ckpt, Path(tmp))
            models.update({FP32: fp32, DYNAMIC: dynamic_int8(fp32, Path(tmp)), "blora-export": out / "model.onnx"})
        for item in named:
            name, _, path = item.partition("=")
            models[name] = Path(path)
        if not models:
            raise click.UsageError("name the models: --bench OUT, --ckpt CKPT --out OUT, or --model NAME=PATH")
        ms = measure(models, [int(t) for t in threads.split(",")], [int(b) for b in batches.split(",")], seq_len,
                     runs, _vocab(models))
        text = table(models, ms, seq_len)
        sizes = {k: p.stat().st_size for k, p in models.items()}
    click.echo(text)
    if json_path:
        json_path.write_text(json.dumps({"seq_len": seq_len, "runs": runs, "ms": ms, "size_bytes": sizes},
                                        indent=2, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
