"""onnxruntime against the integer-exact PyTorch reference (export/reference.py) on real, tokenized inputs.

The rule, stated once: the export is faithful, and written, iff for every set of session options checked
    max |logit_onnx - logit_reference| <= max(RTOL * max(1, max |logit_reference|), NOISE_FACTOR * noise floor)
and the same for the mean over inputs of each input's largest difference (against the noise's mean), with
RTOL = 1e-3, NOISE_FACTOR = 4, and the noise = how much the reference's own logits change when its input
embeddings are scaled by (1 +- 2^-22) or (1 +- 2^-20), i.e. moved by a few float32 ulps.
Why: every weight code and activation code in the graph is the training code (same quantize function, same
Clip bounds, same rounding), and the reference accumulates the integer products exactly as onnxruntime's integer
kernels do; what remains is the float order of the ops that stay float (LayerNorm, softmax, GELU). A quantized
network can amplify that (a value nudged across a rounding boundary moves a whole step), and the noise floor
measures exactly that sensitivity in the reference itself: the rule passes every faithful export and refuses a
wrong scale, zero point, code or a missing Clip, which move the logits far beyond it. Prediction agreement is
reported next to it, and the reference's own agreement under the noise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import DataError
from ..errors import UserError, file_problem
from .artifacts import Agreement, Verification

RTOL = 1e-3
NOISE_FACTOR = 4.0
NOISE_SCALES = (1 + 2**-22, 1 - 2**-22, 1 + 2**-20, 1 - 2**-20)
BATCH_SIZE = 16
RULE = (f"max |logit_onnx - logit_reference| <= max({RTOL:g} * max(1, max |logit_reference|), {NOISE_FACTOR:g} * "
        "noise floor), and the same for the mean over inputs of each input's largest difference; reference = the "
        "PyTorch eval forward with integer-kernel layers accumulated exactly as "
        "onnxruntime does; noise floor = max change of the reference's logits when its input embeddings are scaled "
        "by (1 +- 2^-22) or (1 +- 2^-20)")


class VerificationError(UserError, RuntimeError):
    """The exported model does not reproduce the PyTorch model closely enough."""


@dataclass
class NoiseFloor:
    """How much the reference's own logits move under float32-level noise at the input embeddings."""

    max_abs_diff: float  # the largest change of any logit of any input
    mean_abs_diff: float  # the mean over inputs of each input's largest change
    agreement: float  # the reference against itself: the share of predictions that survive the noise


def read_examples(path: str | Path) -> list[dict]:
    """JSON lines with "text" (and "text_pair" for pair tasks, optional "label")."""
    path = Path(path)
    if problem := file_problem(path):
        raise DataError(f"--validation-file {path} {problem}; pass a JSON lines file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read --validation-file {path} ({e}); save it as UTF-8 JSON lines") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
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
    if not rows:
        raise DataError(f"validation file {path} holds no examples; expected JSON lines with a 'text' field")
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


def _per_input(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each input's largest absolute logit difference."""
    return np.abs(a.astype(np.float64) - b.astype(np.float64)).reshape(len(a), -1).max(-1)


@torch.no_grad()
def noise_floor(model: torch.nn.Module, batches: list[dict[str, np.ndarray]], reference: np.ndarray,
                problem_type: str) -> NoiseFloor:
    """The reference against itself with its input embeddings scaled by each of NOISE_SCALES."""
    if not len(reference):
        return NoiseFloor(0.0, 0.0, 1.0)
    embeddings = model.get_input_embeddings()
    worst, agreement = np.zeros(len(reference)), 1.0
    tol = RTOL * max(1.0, float(np.abs(reference).max()))
    for factor in NOISE_SCALES:
        handle = embeddings.register_forward_hook(lambda _m, _i, out, f=factor: out * f)
        try:
            noisy = torch_logits(model, batches)
        finally:
            handle.remove()
        worst = np.maximum(worst, _per_input(noisy, reference))
        agreement = min(agreement, float(_agree(noisy, reference, problem_type, tol).mean()))
    return NoiseFloor(float(worst.max()), float(worst.mean()), agreement)


def compare(reference: np.ndarray, got: np.ndarray, problem_type: str, labels: list | None = None,
            noise: NoiseFloor | None = None) -> Agreement:
    """The rule: the largest and the mean per-input difference each within NOISE_FACTOR x the noise's (and
    never below RTOL of the logits' scale). The mean catches a bug that moves every input a little."""
    noise = noise or NoiseFloor(0.0, 0.0, 1.0)
    scale = max(1.0, float(np.abs(reference).max())) if reference.size else 1.0
    per_input = _per_input(got, reference) if len(reference) else np.zeros(0)
    tol = max(RTOL * scale, NOISE_FACTOR * noise.max_abs_diff)
    mean_tol = max(RTOL * scale, NOISE_FACTOR * noise.mean_abs_diff)
    max_diff = float(per_input.max()) if per_input.size else 0.0
    mean_diff = float(per_input.mean()) if per_input.size else 0.0
    agree = _agree(got, reference, problem_type, tol)
    result = Agreement(n_inputs=len(reference), max_abs_diff=max_diff, max_rel_diff=max_diff / scale,
                       tolerance=tol, within_tolerance=max_diff <= tol and mean_diff <= mean_tol,
                       agreement=float(agree.mean()) if len(agree) else 0.0,
                       noise_floor=noise.max_abs_diff, noise_agreement=noise.agreement,
                       mean_abs_diff=mean_diff, mean_tolerance=mean_tol, noise_mean=noise.mean_abs_diff)
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


def verify_export(model_path: Path, model: torch.nn.Module, plan, tokenizer, examples: list[dict],
                  input_names: list[str], meta, log: Callable[[str], None]) -> Verification:
    """Run the checks and return the audit's `verify` section; raises VerificationError when onnxruntime's logits
    leave the tolerance (with the project's loader options or onnxruntime's defaults)."""
    import onnxruntime as ort

    from .. import runtime
    from .reference import integer_exact

    batches = encode_batches(tokenizer, examples, input_names, meta.max_seq_length)
    log(f"verifying: onnxruntime vs the integer-exact PyTorch reference on {len(examples)} inputs")
    with integer_exact(model, plan) as exact:
        reference = torch_logits(exact, batches)
        noise = noise_floor(exact, batches, reference, meta.problem_type)
    labels = example_labels(examples, meta.labels)
    sessions = {  # the project's loader, and onnxruntime with no options but quiet logging (plain deployment)
        "loader_options": ort.InferenceSession(str(model_path), runtime.session_options(),
                                               providers=["CPUExecutionProvider"]),
        "default_options": ort.InferenceSession(str(model_path), runtime.session_options({}),
                                                providers=["CPUExecutionProvider"]),
    }
    results = {key: compare(reference, onnx_logits(s, batches), meta.problem_type, labels, noise)
               for key, s in sessions.items()}
    for key, r in results.items():
        log(f"  {key.replace('_', ' ')}: max |diff| {r.max_abs_diff:.3g} (tolerance {r.tolerance:.3g}), "
            f"agreement {100 * r.agreement:.1f}%")
        if not r.within_tolerance:
            raise VerificationError(
                f"onnxruntime ({key.replace('_', ' ')}) differs from the integer-exact reference by up to "
                f"{r.max_abs_diff:.3g} in the logits ({r.mean_abs_diff:.3g} on average per input), beyond "
                f"{NOISE_FACTOR:g} x the reference's own float32 noise ({r.noise_floor:.3g} at most, "
                f"{r.noise_mean:.3g} on average); predictions agree on "
                f"{100 * r.agreement:.1f}% of {r.n_inputs} inputs. The export does not reproduce the trained model "
                "on this CPU (on x86 CPUs without VNNI, try --kernel exact); nothing was written (--no-verify exports "
                "anyway)")
    # The loader's options (what runtime.load uses) are the verdict; "default_options": plain onnxruntime.
    return Verification(results["loader_options"], results["default_options"], dict(runtime.SESSION_CONFIG), RULE)
