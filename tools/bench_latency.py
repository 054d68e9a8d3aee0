"""onnxruntime latency and file size of a `compress` output against the fp32 ONNX of the same model and against
onnxruntime's quantize_dynamic of that fp32 model, all measured in the same run (interleaved, median of runs).

    python tools/bench_latency.py CKPT OUT [--batch 8] [--seq-len 128] [--threads 1,2] [--runs 20] [--json F]

The fp32 reference is the checkpoint's architecture exported by the same torch.onnx path compress uses.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np


def fp32_onnx(ckpt: Path, work: Path) -> tuple[Path, list[str]]:
    from transformers import AutoTokenizer

    from blora_export.checkpoint import load_checkpoint
    from blora_export.export.onnx_export import export_float, model_input_names
    from blora_export.inject import strip

    model, _ = load_checkpoint(ckpt)
    plain = strip(model).eval()
    names = model_input_names(plain, AutoTokenizer.from_pretrained(str(ckpt)))
    path = work / "fp32.onnx"
    path.write_bytes(export_float(plain, names).SerializeToString())
    return path, names


def dynamic_int8(fp32: Path, work: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = work / "dynamic.onnx"
    quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
    return path


def session(path: Path, threads: int, ours: bool):
    import onnxruntime as ort

    from blora_export import runtime

    so = runtime.session_options(threads=threads) if ours else ort.SessionOptions()
    so.intra_op_num_threads = threads
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


def measure(models: dict[str, Path], ours: set[str], threads: list[int], runs: int, batch: int,
            seq_len: int, vocab: int = 20000) -> dict[str, dict[str, float]]:
    """Median milliseconds per batch of every model at each thread count: {threads: {name: ms}}. Runs are
    interleaved so drifting machine load hits every model alike. Models named in `ours` get the session options
    compress verified (runtime.session_options); the others onnxruntime's defaults."""
    ms = {}
    for t in threads:
        sessions = {k: session(p, t, ours=k in ours) for k, p in models.items()}
        feeds = {k: feed_for(s, batch, seq_len, vocab) for k, s in sessions.items()}
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for k, s in sessions.items():  # warm-up
            s.run(None, feeds[k])
        for _ in range(runs):
            for k, s in sessions.items():
                start = time.perf_counter()
                s.run(None, feeds[k])
                times[k].append(time.perf_counter() - start)
        ms[str(t)] = {k: 1000 * statistics.median(v) for k, v in times.items()}
    return ms


@click.command()
@click.argument("ckpt", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--batch", default=8, show_default=True)
@click.option("--seq-len", default=128, show_default=True)
@click.option("--threads", default="1,2", show_default=True)
@click.option("--runs", default=20, show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the results as JSON.")
def main(ckpt: Path, out: Path, batch: int, seq_len: int, threads: str, runs: int, json_path: Path | None) -> None:
    """Latency (batch x seq-len) and size of OUT/model.onnx vs fp32 ONNX and quantize_dynamic(fp32)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32, _ = fp32_onnx(ckpt, work)
        models = {"fp32": fp32, "quantize_dynamic": dynamic_int8(fp32, work), "blora-export": out / "model.onnx"}
        sizes = {k: p.stat().st_size for k, p in models.items()}
        results = {"batch": batch, "seq_len": seq_len, "runs": runs, "size_bytes": sizes,
                   "ms": measure(models, {"blora-export"}, [int(x) for x in threads.split(",")], runs, batch,
                                 seq_len)}
    click.echo(f"batch {batch} x {seq_len} tokens, median of {runs} interleaved runs")
    header = f"{'model':<18}{'MB':>8}{'size':>8}" + "".join(f"{f'ms@{t}t':>11}{'speed-up':>10}" for t in
                                                              results["ms"])
    click.echo(header)
    for k in models:
        row = f"{k:<18}{sizes[k] / 1e6:>8.1f}{sizes[k] / sizes['fp32']:>7.2f}x"
        for ms in results["ms"].values():
            row += f"{ms[k]:>11.1f}{ms['fp32'] / ms[k]:>9.2f}x"
        click.echo(row)
    if json_path:
        json_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
