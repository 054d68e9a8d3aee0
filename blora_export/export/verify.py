"""onnxruntime against the PyTorch eval forward (deterministic gates) on real, tokenized inputs.

The tolerance rule, stated once:
    max |logit_onnx - logit_torch| <= max(RTOL * max(1, max |logit_torch|), NOISE_FACTOR * noise floor)
with RTOL = 1e-3, NOISE_FACTOR = 4, and the noise floor = the largest change of PyTorch's own logits when its
input embeddings are scaled by (1 +- 2^-22) or (1 +- 2^-20), i.e. moved by a few float32 ulps.
Why: every weight code and activation code in the graph is the training code (same quantize function, same
Clip bounds, same rounding); what remains is float32 summation order (onnxruntime vs PyTorch kernels). A
quantized network can amplify that: a value that fp32 noise moves across a rounding boundary changes one code by
one step, and low-bit layers downstream can cascade it. The noise floor measures exactly that sensitivity in
PyTorch itself, so the rule stays tight (RTOL) for well-conditioned models and honest for chaotic ones.
Predictions must agree on >= MIN_AGREEMENT of the inputs (the gate for writing the output); the tolerance
verdict and PyTorch's own agreement under the noise are reported next to it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import DataError
from ..errors import UserError
from .artifacts import Agreement, Verification

RTOL = 1e-3
NOISE_FACTOR = 4.0
NOISE_SCALES = (1 + 2**-22, 1 - 2**-22, 1 + 2**-20, 1 - 2**-20)
MIN_AGREEMENT = 0.99
BATCH_SIZE = 16
RULE = (f"max |logit_onnx - logit_torch| <= max({RTOL:g} * max(1, max |logit_torch|), {NOISE_FACTOR:g} * noise floor), "
        "noise floor = max change of PyTorch's logits when its input embeddings are scaled by (1 +- 2^-22) or "
        f"(1 +- 2^-20); predictions must agree on >= {100 * MIN_AGREEMENT:.0f}% of inputs")


class VerificationError(UserError, RuntimeError):
    """The exported model does not reproduce the PyTorch model closely enough."""


@dataclass
class NoiseFloor:
    """How much PyTorch's own logits move under float32-level noise at the input embeddings."""

    max_abs_diff: float
    agreement: float  # PyTorch vs itself: the share of predictions that survive the noise


def read_examples(path: str | Path) -> list[dict]:
    """JSON lines with "text" (and "text_pair" for pair tasks, optional "label")."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"validation file {path} does not exist")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i} is not JSON ({e.msg}); expected JSON lines with a 'text' field") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DataError(f"{path}:{i} has no string 'text' field; expected JSON lines like "
                             '{"text": "...", "label": 1}')
        rows.append(row)
    return rows


def encode_batches(tokenizer, examples: list[dict], input_names: list[str], max_length: int,
                   batch_size: int = BATCH_SIZE) -> list[dict[str, np.ndarray]]:
    """Tokenize like deployment does: truncation at max_length, padding to the longest in each batch."""
    batches = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        texts = [ex["text"] for ex in chunk]
        pairs = [ex["text_pair"] for ex in chunk] if all("text_pair" in ex for ex in chunk) else None
        enc = tokenizer(texts, pairs, padding=True, truncation=True, max_length=max_length, return_tensors="np")
        batches.append({n: np.asarray(enc[n], dtype=np.int64) for n in input_names})
    return batches


@torch.no_grad()
def torch_logits(model: torch.nn.Module, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    model.eval()
    out = [model(**{k: torch.from_numpy(v) for k, v in b.items()}).logits.float().numpy() for b in batches]
    return np.concatenate(out)


def onnx_logits(session, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([session.run(["logits"], b)[0] for b in batches])


def _agree(a: np.ndarray, b: np.ndarray, problem_type: str, tol: float) -> np.ndarray:
    if problem_type == "regression":
        return (np.abs(a - b).reshape(len(a), -1) <= tol).all(-1)
    if problem_type == "multi_label_classification":
        return ((a > 0) == (b > 0)).all(-1)
    return a.argmax(-1) == b.argmax(-1)


@torch.no_grad()
def noise_floor(model: torch.nn.Module, batches: list[dict[str, np.ndarray]], reference: np.ndarray,
                problem_type: str) -> NoiseFloor:
    """PyTorch against itself with its input embeddings scaled by each of NOISE_SCALES."""
    embeddings = model.get_input_embeddings()
    worst, agreement = 0.0, 1.0
    tol = RTOL * max(1.0, float(np.abs(reference).max())) if reference.size else RTOL
    for factor in NOISE_SCALES:
        handle = embeddings.register_forward_hook(lambda _m, _i, out, f=factor: out * f)
        try:
            noisy = torch_logits(model, batches)
        finally:
            handle.remove()
        worst = max(worst, float(np.abs(noisy.astype(np.float64) - reference).max()) if noisy.size else 0.0)
        agreement = min(agreement, float(_agree(noisy, reference, problem_type, tol).mean()) if len(noisy) else 1.0)
    return NoiseFloor(worst, agreement)


def compare(reference: np.ndarray, got: np.ndarray, problem_type: str, labels: list | None = None,
            noise: NoiseFloor | None = None) -> Agreement:
    noise = noise or NoiseFloor(0.0, 1.0)
    diff = np.abs(got.astype(np.float64) - reference.astype(np.float64))
    scale = max(1.0, float(np.abs(reference).max())) if reference.size else 1.0
    tol = max(RTOL * scale, NOISE_FACTOR * noise.max_abs_diff)
    max_diff = float(diff.max()) if diff.size else 0.0
    agree = _agree(got, reference, problem_type, tol)
    result = Agreement(n_inputs=len(reference), max_abs_diff=max_diff, max_rel_diff=max_diff / scale,
                          tolerance=tol, within_tolerance=max_diff <= tol,
                          agreement=float(agree.mean()) if len(agree) else 0.0,
                          noise_floor=noise.max_abs_diff, noise_agreement=noise.agreement)
    if labels is not None and problem_type == "single_label_classification" and len(labels) == len(reference):
        y = np.asarray(labels)
        result.accuracy_onnx = float((got.argmax(-1) == y).mean())
        result.accuracy_torch = float((reference.argmax(-1) == y).mean())
    return result


def example_labels(examples: list[dict], label_names: list[str]) -> list[int] | None:
    """Integer labels of the examples (ints or label names), or None when some are missing or unknown."""
    out = []
    for ex in examples:
        label = ex.get("label")
        if isinstance(label, bool) or label is None:
            return None
        if isinstance(label, int) and 0 <= label < len(label_names):
            out.append(label)
        elif isinstance(label, str) and label in label_names:
            out.append(label_names.index(label))
        else:
            return None
    return out


def verify_export(model_path: Path, model: torch.nn.Module, tokenizer, examples: list[dict], input_names: list[str],
                  meta, log: Callable[[str], None]) -> Verification:
    """Run the checks and return the audit's `verify` section; raises VerificationError below MIN_AGREEMENT."""
    import onnxruntime as ort

    from .. import runtime

    batches = encode_batches(tokenizer, examples, input_names, meta.max_seq_length)
    log(f"verifying: PyTorch eval forward vs onnxruntime on {len(examples)} inputs")
    reference = torch_logits(model, batches)
    noise = noise_floor(model, batches, reference, meta.problem_type)
    labels = example_labels(examples, meta.labels)
    sessions = {  # the project's loader, and onnxruntime with no options at all (plain deployment)
        "loader_options": ort.InferenceSession(str(model_path), runtime.session_options(),
                                               providers=["CPUExecutionProvider"]),
        "default_options": ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]),
    }
    results = {key: compare(reference, onnx_logits(s, batches), meta.problem_type, labels, noise)
               for key, s in sessions.items()}
    for key, r in results.items():
        log(f"  {key.replace('_', ' ')}: max |diff| {r.max_abs_diff:.3g} (tolerance {r.tolerance:.3g}), "
            f"agreement {100 * r.agreement:.1f}%")
        if r.agreement < MIN_AGREEMENT:
            raise VerificationError(f"onnxruntime ({key.replace('_', ' ')}) agrees with PyTorch on only "
                                    f"{100 * r.agreement:.1f}% of {r.n_inputs} inputs (need "
                                    f"{100 * MIN_AGREEMENT:.0f}%; max |diff| {r.max_abs_diff:.3g}, PyTorch's own "
                                    f"float32 noise floor {r.noise_floor:.3g} keeps "
                                    f"{100 * r.noise_agreement:.1f}% of its predictions); nothing was written "
                                    "(use --no-verify to export anyway)")
        if not r.within_tolerance:
            log(f"  warning: max |diff| {r.max_abs_diff:.3g} exceeds the tolerance {r.tolerance:.3g}")
    # The loader's options (what runtime.load uses) are the verdict; "default_options": plain onnxruntime.
    return Verification(results["loader_options"], results["default_options"], dict(runtime.SESSION_CONFIG), RULE)
