"""Deployment: load a `blora-export compress` output directory and predict with onnxruntime.

    from blora_export.runtime import load
    predictor = load("out")
    predictor.predict(["a good movie"])   # [{"label": "positive", "label_id": 1, "score": 0.93, "logits": [...]}]

The directory is also usable without this package: onnxruntime.InferenceSession("out/model.onnx") and
transformers.AutoTokenizer.from_pretrained("out"), feeding the tokenizer outputs listed in deploy.json. The
session options below are the ones `compress` verified with; plain default options are verified too and give
the same results (the export avoids onnxruntime's AVX2 int8 saturation by construction, see export/plan.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .export.artifacts import DEPLOY_FILE, ArtifactError, Deploy

# Guard: onnxruntime's WeightBiasQuantization pass would re-quantize an fp32 weight that sits next to a
# quantized activation (int8 per tensor). The export never builds that pattern; the loader disables it anyway.
SESSION_CONFIG: dict[str, str] = {"optimization.disable_specified_optimizers": "WeightBiasQuantization"}


class DeploymentError(UserError, ValueError):
    """The directory is not a complete `blora-export compress` output."""


def session_options(config: dict[str, str] | None = None, threads: int | None = None):
    """onnxruntime SessionOptions with the project's config entries (SESSION_CONFIG unless given)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    for key, value in (SESSION_CONFIG if config is None else config).items():
        so.add_session_config_entry(key, str(value))
    if threads:
        so.intra_op_num_threads = threads
    return so


def read_deploy(out_dir: str | Path) -> Deploy:
    path = Path(out_dir) / DEPLOY_FILE
    if not path.is_file():
        raise DeploymentError(f"{path} is missing; {out_dir} is not a `blora-export compress` output directory")
    try:
        return Deploy.read(out_dir)
    except ArtifactError as e:
        raise DeploymentError(f"{e}; re-run `blora-export compress`") from None


@dataclass
class Predictor:
    session: Any
    tokenizer: Any
    deploy: Deploy

    @property
    def labels(self) -> list[str]:
        return list(self.deploy.labels)

    @property
    def max_length(self) -> int:
        return self.deploy.max_length

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def encode(self, texts: list[str], text_pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        enc = self.tokenizer(list(texts), list(text_pairs) if text_pairs is not None else None, padding=True,
                             truncation=True, max_length=self.max_length, return_tensors="np")
        return {n: np.asarray(enc[n], dtype=np.int64) for n in self.input_names}

    def logits(self, texts: list[str], text_pairs: list[str] | None = None, batch_size: int = 32) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not a single string")
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text pairs")
        out = []
        for start in range(0, len(texts), batch_size):
            pairs = text_pairs[start:start + batch_size] if text_pairs is not None else None
            out.append(self.session.run(["logits"], self.encode(texts[start:start + batch_size], pairs))[0])
        n_out = self.session.get_outputs()[0].shape[-1]
        return np.concatenate(out) if out else np.zeros((0, n_out if isinstance(n_out, int) else 0), np.float32)

    def predict(self, texts: list[str], text_pairs: list[str] | None = None, batch_size: int = 32) -> list[dict]:
        logits = self.logits(texts, text_pairs, batch_size)
        problem = self.deploy.problem_type
        results = []
        for row in logits:
            if problem == "regression":
                results.append({"score": float(row[0]), "logits": row.tolist()})
            elif problem == "multi_label_classification":
                probs = 1 / (1 + np.exp(-row))
                results.append({"labels": [self.labels[i] for i in np.flatnonzero(probs > 0.5)],
                                "scores": probs.tolist(), "logits": row.tolist()})
            else:
                probs = np.exp(row - row.max())
                probs /= probs.sum()
                i = int(row.argmax())
                label = self.labels[i] if i < len(self.labels) else str(i)
                results.append({"label": label, "label_id": i, "score": float(probs[i]), "logits": row.tolist()})
        return results


def load(out_dir: str | Path, providers: list[str] | None = None, threads: int | None = None) -> Predictor:
    """Open a compress output directory: the ONNX session with the recorded options, and its tokenizer."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    deploy = read_deploy(out_dir)
    model = out_dir / deploy.model
    if not model.is_file():
        raise DeploymentError(f"{model} is missing; re-run `blora-export compress`")
    so = session_options(deploy.session_config, threads)
    session = ort.InferenceSession(str(model), so, providers=providers or ["CPUExecutionProvider"])
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    return Predictor(session, tokenizer, deploy)
