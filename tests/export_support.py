"""Shared, cached artefacts for the export tests: tiny base models, checkpoints and compress outputs.

Built once per test session (functools.cache) under one temporary root, so the export suite exports each
(model, method, profile) combination a single time; tests must treat the returned directories as read-only.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from blora_export.export.pipeline import CompressOptions, compress
from blora_export.testing import TEST_WIDTHS, make_test_checkpoint, make_tiny_variant

ROOT = Path(tempfile.mkdtemp(prefix="blora-export-tests-"))
atexit.register(shutil.rmtree, ROOT, ignore_errors=True)
SEQ_LEN = 32  # the test checkpoints' max_seq_length and MAC-profile T


@functools.cache
def base_dir(model_type: str) -> Path:
    """Tiny random encoder with non-zero biases; DeBERTa-v2 shares its key/query projections with the relative
    embeddings (share_att_key), so one weight feeds two MatMuls."""
    extra = {"share_att_key": True} if model_type == "deberta-v2" else {}
    return make_tiny_variant(ROOT / f"base-{model_type}", model_type, **extra)


def checkpoint(model_type: str, method: str = "blora") -> Path:
    return _checkpoint(model_type, method)


@functools.cache
def _checkpoint(model_type: str, method: str) -> Path:
    return make_test_checkpoint(ROOT / f"ckpt-{model_type}-{method}", base_dir(model_type), method=method,
                                seq_len=SEQ_LEN)


def compressed(model_type: str, method: str = "blora", profile: str = "speed"):
    """(output directory, CompressResult) of `compress` with default options (verification on)."""
    return _compressed(model_type, method, profile)


@functools.cache
def _compressed(model_type: str, method: str, profile: str):
    out = ROOT / f"out-{model_type}-{method}-{profile}"
    result = compress(checkpoint(model_type, method), out, CompressOptions(profile=profile, timing_runs=2))
    return out, result


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def tree_bytes(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def nodes_by_module(model) -> dict[str, list]:
    """MatMul/Gemm nodes of an exported graph, keyed by their blora.module metadata."""
    from blora_export.export.qdq import metadata

    out: dict[str, list] = {}
    for n in model.graph.node:
        name = metadata(n).get("module")
        if name:
            out.setdefault(name, []).append(n)
    return out


def hand_bops_tiny_bert(seq_len: int = SEQ_LEN) -> dict:
    """Whole-model and adapted BOPs of the tiny BERT blora test checkpoint, computed by hand.

    hidden 32, 2 heads, FFN 64, 2 layers; per layer: Q/K/V/attention-output T*32*32 MACs, FFN T*32*64 and
    T*64*32; attention scores and context T*T*32 each; pooler 32*32, classifier 32*2 (one token). Widths
    follow TEST_WIDTHS over the 12 quantized Linears in module order; everything else is 32 x 32.
    """
    t = seq_len
    names = ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense"]
    macs = {"attention.self.query": t * 32 * 32, "attention.self.key": t * 32 * 32,
            "attention.self.value": t * 32 * 32, "attention.output.dense": t * 32 * 32,
            "intermediate.dense": t * 32 * 64, "output.dense": t * 64 * 32}
    whole, adapted, adapted_fp32, i = 0, 0, 0, 0
    for _layer in range(2):
        for name in names:
            w, a = TEST_WIDTHS[i % len(TEST_WIDTHS)]
            whole += macs[name] * w * a
            if name.startswith("attention.self."):
                adapted += macs[name] * w * a
                adapted_fp32 += macs[name] * 32 * 32
            i += 1
        whole += 2 * (t * t * 32) * 32 * 32
    whole += (32 * 32 + 32 * 2) * 32 * 32
    whole_fp32 = (2 * (4 * t * 32 * 32 + 2 * t * 32 * 64 + 2 * t * t * 32) + 32 * 32 + 64) * 32 * 32
    return {"whole": whole, "whole_fp32": whole_fp32, "adapted": adapted, "adapted_fp32": adapted_fp32}


def tokenize(tokenizer, texts: list[str], names: list[str], max_length: int = SEQ_LEN) -> dict[str, np.ndarray]:
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {n: np.asarray(enc[n], dtype=np.int64) for n in names}


def save_with_wrong_activation_scale(monkeypatch) -> None:
    """Make compress write a real export bug - the last activation step 1.5x too large - so verification must
    refuse it (the last layer: a random tiny model's first layers barely move its logits)."""
    from onnx import numpy_helper

    from blora_export.export import pipeline

    save = pipeline._save_model

    def save_wrong(proto, path):
        scale = [t for t in proto.graph.initializer if t.name.endswith(".input_scale")][-1]
        scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) * np.float32(1.5), scale.name))
        save(proto, path)

    monkeypatch.setattr(pipeline, "_save_model", save_wrong)
