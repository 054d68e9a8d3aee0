"""Loading the base encoder (hub name or local directory) and fingerprinting its weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn


def load_base_model(ref: str, num_labels: int, id2label: dict[int, str] | None = None,
                    problem_type: str | None = None, trust_remote_code: bool = False) -> nn.Module:
    """AutoModelForSequenceClassification with a fresh head of `num_labels` outputs, eager attention.

    Eager attention keeps training, the MAC profile and the ONNX export on the same MatMul graph.
    """
    from transformers import AutoModelForSequenceClassification

    kwargs = {"num_labels": num_labels, "trust_remote_code": trust_remote_code, "attn_implementation": "eager"}
    if id2label:
        kwargs["id2label"] = {int(k): v for k, v in id2label.items()}
        kwargs["label2id"] = {v: int(k) for k, v in id2label.items()}
    if problem_type:
        kwargs["problem_type"] = problem_type
    from transformers.utils import logging as hf_logging

    # The head is fresh by design: silence the "newly initialized weights" report.
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoModelForSequenceClassification.from_pretrained(ref, **kwargs)
    finally:
        hf_logging.set_verbosity(previous)


def check_model_path(ref: str) -> None:
    """A local --model must be a directory (a file or a pipe would be taken for a hub name and fail obscurely)."""
    from .errors import UserError

    path = Path(ref)
    if path.exists() and not path.is_dir():
        raise UserError(f"--model {ref} is not a directory; pass the model's directory (config.json, weights and "
                        "tokenizer files, as written by save_pretrained) or a Hugging Face model name")


def load_errors() -> tuple[type[BaseException], ...]:
    """What loading a damaged or foreign model directory raises: a bad config.json (wrong types, too deeply
    nested), truncated safetensors, weights of other shapes, a pickle that torch's safe loader refuses."""
    import pickle

    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, TypeError, RuntimeError, RecursionError, SafetensorError,
            StrictDataclassError, pickle.UnpicklingError)


def max_positions(model: nn.Module) -> int | None:
    """The longest token sequence the model's position embeddings take (None: no limit recorded)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    padding = getattr(embeddings, "padding_idx", None)
    if limit and isinstance(padding, int) and hasattr(embeddings, "position_embeddings"):
        limit -= padding + 1  # RoBERTa-style positions start after the padding index
    return limit


def fingerprint(model: nn.Module, exclude_prefixes: tuple[str, ...] = ()) -> str:
    """sha256 over the frozen backbone's tensors (names and bytes), head excluded: identifies the base model."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if any(name == p or name.startswith(p + ".") for p in exclude_prefixes):
            continue
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def is_local(ref: str) -> bool:
    return Path(ref).exists()
