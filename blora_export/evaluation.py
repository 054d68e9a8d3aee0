"""`blora-export eval`: the task metric of a compress output (onnxruntime), optionally next to its checkpoint's.

The validation data are read by the code `train` reads them with (blora_export.data.load_validation), tokenized the way
deployment does (blora_export.runtime: truncation at the recorded max_length, padding per batch), and their
labels mapped to the class ids of the label names recorded in OUT/deploy.json.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import DataSpec
from .errors import UserError, file_problem


class EvalError(UserError, ValueError):
    """Data or model that cannot be evaluated together; the message says what to fix."""


@dataclass
class EvalOptions:
    data: DataSpec  # the validation split: data_dir's dev file or validation_file (no training file)
    batch_size: int = 32
    ckpt: str | None = None
    trust_remote_code: bool = False
    noise_floor: bool = False  # also measure the reference's own agreement under float32-level input noise

    def validate(self) -> EvalOptions:
        if bool(self.data.data_dir) == bool(self.data.validation_file) or self.data.train_file:
            raise EvalError("pass the validation data as exactly one of --data-dir DIR or --validation-file FILE")
        # Say what is there (the data reader would report a directory or a pipe as an unknown file type).
        problem = file_problem(self.data.validation_file) if self.data.validation_file else None
        if problem:
            raise EvalError(f"--validation-file {self.data.validation_file} {problem}"
                            "; pass a .csv, .tsv, .json or .jsonl file")
        if self.data.data_dir and Path(self.data.data_dir).exists() and not Path(self.data.data_dir).is_dir():
            raise EvalError(f"--data-dir {self.data.data_dir} is a file, not a directory; pass the directory of "
                            "the GLUE files or the file as --validation-file")
        self.data.validate()
        if self.noise_floor and not self.ckpt:
            raise EvalError("--noise-floor measures the checkpoint's reference; pass --ckpt CKPT with it")
        if self.batch_size < 1:
            raise EvalError("--batch-size must be >= 1")
        return self


def _label_map(task, model_labels: list[str], regression_model: bool, out_dir) -> np.ndarray | None:
    """Data class id -> the model's class id (None: identity or regression); an EvalError when names are unknown."""
    if task.is_regression != regression_model:
        kind = "a regression" if task.is_regression else "a classification"
        raise EvalError(f"task {task.name} is {kind} task but the model in {out_dir} is "
                        f"{'a regression model' if regression_model else f'a classifier over {model_labels}'}")
    if task.is_regression or list(task.labels) == list(model_labels):
        return None
    unknown = [name for name in task.labels if name not in model_labels]
    if unknown:
        raise EvalError(f"labels {unknown} of task {task.name} are unknown to the model in {out_dir} (its labels: "
                        f"{model_labels}); pass the --task it was trained on")
    return np.array([model_labels.index(name) for name in task.labels])


def _report(logits: np.ndarray, labels: np.ndarray, task) -> dict[str, float]:
    from .data import metrics

    return metrics.compute(task.metrics, logits, labels, task.is_regression)


def evaluate_export(out_dir: str | Path, options: EvalOptions,
                    log: Callable[[str], None] = lambda _msg: None) -> dict:
    """Metrics of OUT's ONNX model on the validation data (and of the checkpoint with options.ckpt)."""
    from . import runtime
    from .data import load_validation

    options.validate()
    predictor = runtime.load(out_dir)
    model_labels = predictor.labels
    regression_model = predictor.deploy.problem_type == "regression"
    task, examples = load_validation(options.data, None if regression_model else model_labels)
    mapping = _label_map(task, model_labels, regression_model, out_dir)
    labels = np.asarray([e.label for e in examples])
    if mapping is not None:
        labels = mapping[labels.astype(np.int64)]
    log(f"{len(examples)} validation examples of task {task.name}")

    batches = []
    for start in range(0, len(examples), options.batch_size):
        chunk = examples[start:start + options.batch_size]
        pairs = [e.text_pair for e in chunk] if chunk[0].text_pair is not None else None
        batches.append(predictor.encode([e.text for e in chunk], pairs))
    started = time.perf_counter()
    onnx_logits = np.concatenate([predictor.run(b) for b in batches])
    elapsed = time.perf_counter() - started
    n_out = 1 if regression_model else len(model_labels)
    if onnx_logits.shape[-1] != n_out:
        raise EvalError(f"the model in {out_dir} outputs {onnx_logits.shape[-1]} logits but deploy.json lists "
                        f"{n_out} labels; re-run `blora-export compress`")
    result = {"task": task.name, "metric": task.metric, "n_examples": len(examples),
              "data": str(options.data.data_dir or options.data.validation_file), "model": str(out_dir),
              "batch_size": options.batch_size,
              "onnx": {**_report(onnx_logits, labels, task),
                       "examples_per_second": len(examples) / elapsed if elapsed > 0 else None},
              "torch": None, "agreement": None, "max_abs_logit_diff": None, "noise": None}
    if options.ckpt:
        from . import fused
        from .checkpoint import load_checkpoint
        from .export.plan import make_plan
        from .export.reference import integer_exact
        from .export.tables import narrow_word_table
        from .export.verify import noise_floor, torch_logits

        log(f"loading checkpoint {options.ckpt}")
        model, meta = load_checkpoint(options.ckpt, trust_remote_code=options.trust_remote_code)
        if list(meta.labels) != list(model_labels):
            raise EvalError(f"checkpoint {options.ckpt} has labels {meta.labels} but {out_dir} has "
                            f"{model_labels}; pass the checkpoint {out_dir} was compressed from")
        narrow_word_table(model, predictor.deploy.profile)  # the table the export ships (size profile)
        plan = make_plan(model, meta.quantized, meta.adapted, meta.profile, meta.config.method,
                         predictor.deploy.profile, predictor.deploy.opset)
        with fused.eager(), integer_exact(model, plan) as exact:
            ref = torch_logits(exact, batches)
            if options.noise_floor:  # the same noise compress's verification rule is based on, on every example
                noise = noise_floor(exact, batches, ref, predictor.deploy.problem_type)
                result["noise"] = {"agreement": noise.agreement, "max_abs_logit_diff": noise.max_abs_diff}
        result["torch"] = _report(ref, labels, task)
        result["max_abs_logit_diff"] = float(np.abs(ref - onnx_logits).max()) if len(ref) else 0.0
        if not regression_model:
            result["agreement"] = float((ref.argmax(-1) == onnx_logits.argmax(-1)).mean())
    return result


def format_result(result: dict) -> str:
    def metrics(d: dict) -> str:
        return ", ".join(f"{k} {v:.4f}" for k, v in d.items() if k != "examples_per_second")

    lines = [f"{result['task']} on {result['n_examples']} examples of {result['data']} "
             f"(metric: {result['metric']})",
             f"onnxruntime ({result['model']}): {metrics(result['onnx'])}"]
    speed = result["onnx"]["examples_per_second"]
    if speed:
        lines[-1] += f"; {speed:,.1f} examples/s (batch {result['batch_size']}, inference only)"
    if result["torch"] is not None:
        lines.append(f"pytorch checkpoint: {metrics(result['torch'])}")
        if result["agreement"] is not None:
            same = round(result["agreement"] * result["n_examples"])
            lines.append(f"agreement: {100 * result['agreement']:.2f}% of predictions ({same}/{result['n_examples']})"
                         f", max |logit difference| {result['max_abs_logit_diff']:.3g}")
        else:
            lines.append(f"max |prediction difference|: {result['max_abs_logit_diff']:.3g}")
    if result["noise"] is not None:
        same = round(result["noise"]["agreement"] * result["n_examples"])
        lines.append(f"noise floor: the checkpoint itself keeps {100 * result['noise']['agreement']:.2f}% of its "
                     f"predictions ({same}/{result['n_examples']}) when its input embeddings move by float32 ulps, "
                     f"max |logit change| {result['noise']['max_abs_logit_diff']:.3g}")
    return "\n".join(lines)
