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

from .errors import UserError, file_problem, one_line
from .export.artifacts import DEPLOY_FILE, Deploy
from .typed_json import JsonShapeError

# Guard: onnxruntime's WeightBiasQuantization pass would re-quantize an fp32 weight that sits next to a
# quantized activation (int8 per tensor). The export never builds that pattern; the loader disables it anyway.
SESSION_CONFIG: dict[str, str] = {"optimization.disable_specified_optimizers": "WeightBiasQuantization"}


class DeploymentError(UserError, ValueError):
    """The directory is not a complete `blora-export compress` output."""


def session_options(config: dict[str, str] | None = None, threads: int | None = None):
    """onnxruntime SessionOptions with the project's config entries (SESSION_CONFIG unless given)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    # Fatal only: onnxruntime's [E:onnxruntime:...] lines repeat the exception it raises, and would print before
    # the command line's one `Error:` line (3 still shows errors).
    so.log_severity_level = 4
    for key, value in (SESSION_CONFIG if config is None else config).items():
        so.add_session_config_entry(key, str(value))
    if threads:
        so.intra_op_num_threads = threads
    return so


def read_deploy(out_dir: str | Path) -> Deploy:
    path = Path(out_dir) / DEPLOY_FILE
    if not Path(out_dir).is_dir():
        problem = "is not a directory" if Path(out_dir).exists() else "does not exist"
        raise DeploymentError(f"{out_dir} {problem}; pass the --output-dir of `blora-export compress`")
    if problem := file_problem(path):
        raise DeploymentError(f"{path} {problem}; {out_dir} is not a `blora-export compress` output "
                              "directory")
    try:
        return Deploy.read(out_dir)
    except JsonShapeError as e:
        raise DeploymentError(f"{e}; re-run `blora-export compress`") from None


@dataclass
class Predictor:
    session: Any
    tokenizer: Any
    deploy: Deploy
    out_dir: Path | None = None  # named in error messages

    @property
    def labels(self) -> list[str]:
        return list(self.deploy.labels)

    @property
    def max_length(self) -> int:
        return self.deploy.max_length

    @property
    def model_path(self) -> Path:
        return Path(self.out_dir or ".") / self.deploy.model

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    def encode(self, texts: list[str], text_pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        try:
            enc = self.tokenizer(list(texts), list(text_pairs) if text_pairs is not None else None, padding=True,
                                 truncation=True, max_length=self.max_length, return_tensors="np")
            return {n: np.asarray(enc[n], dtype=np.int64) for n in self.input_names}
        except (TypeError, ValueError):
            raise  # bad arguments of the caller
        except Exception as e:  # tokenizers' own errors (e.g. a vocabulary without [UNK]) are plain Exceptions
            raise DeploymentError(f"the tokenizer in {self.out_dir or '.'} failed ({one_line(e)[:200]}); it does "
                                  "not belong to the model: re-run `blora-export compress`") from None

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """The logits of one encoded batch; an onnxruntime failure (ids beyond the model's vocabulary or positions,
        from a tokenizer that does not belong to it) becomes a DeploymentError."""
        try:
            return self.session.run([self.deploy.output_name], batch)[0]
        except Exception as e:  # onnxruntime's errors are plain Exception subclasses
            raise DeploymentError(f"onnxruntime could not run {self.model_path} on the tokenized inputs "
                                  f"({one_line(e)[:300]}); do the tokenizer and deploy.json belong to the model? "
                                  "re-run `blora-export compress`") from None

    def logits(self, texts: list[str], text_pairs: list[str] | None = None, batch_size: int = 32) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not a single string")
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text pairs")
        out = []
        for start in range(0, len(texts), batch_size):
            pairs = text_pairs[start:start + batch_size] if text_pairs is not None else None
            out.append(self.run(self.encode(texts[start:start + batch_size], pairs)))
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
    if problem := file_problem(model):
        raise DeploymentError(f"{model} {problem}; re-run `blora-export compress`")
    try:
        session = ort.InferenceSession(str(model), session_options(deploy.session_config, threads),
                                       providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's errors are plain Exception subclasses: truncated, garbage, empty file
        raise DeploymentError(f"{model} is not a model onnxruntime can load ({one_line(e)[:300]}); "
                              "re-run `blora-export compress`") from None
    _check_signature(session, deploy, out_dir / DEPLOY_FILE)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    except Exception as e:  # missing or damaged tokenizer files: OSError, ValueError, the tokenizers' Exception
        raise DeploymentError(f"{out_dir} has no usable tokenizer ({type(e).__name__}: {one_line(e)[:200]}); "
                              "re-run `blora-export compress`") from None
    return Predictor(session, tokenizer, deploy, out_dir)


def _check_signature(session, deploy: Deploy, path: Path) -> None:
    """deploy.json must describe this graph: its inputs, its output and the number of logits."""
    inputs = {i.name for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    n_logits = (outputs.get(deploy.output_name) or [None])[-1]  # None or a name where the size is dynamic
    expected = 1 if deploy.problem_type == "regression" else len(deploy.labels)
    if set(deploy.input_names) != inputs or deploy.output_name not in outputs or \
            (isinstance(n_logits, int) and n_logits != expected):
        raise DeploymentError(f"{path} does not describe {deploy.model} (inputs {sorted(inputs)}, outputs "
                              f"{sorted(outputs)} with {n_logits} logits; deploy.json lists inputs "
                              f"{deploy.input_names}, output {deploy.output_name!r} and {expected} labels); "
                              "re-run `blora-export compress`")
