"""Task metrics as pure numpy functions (no scipy/sklearn at run time)."""

from __future__ import annotations

import numpy as np


def accuracy(pred, labels) -> float:
    pred, labels = np.asarray(pred), np.asarray(labels)
    return float((pred == labels).mean()) if labels.size else 0.0


def _f1(pred: np.ndarray, labels: np.ndarray, positive) -> float:
    tp = int(((pred == positive) & (labels == positive)).sum())
    fp = int(((pred == positive) & (labels != positive)).sum())
    fn = int(((pred != positive) & (labels == positive)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def f1(pred, labels, positive: int = 1) -> float:
    """Binary F1 of the positive class (GLUE's MRPC/QQP convention: class 1)."""
    return _f1(np.asarray(pred), np.asarray(labels), positive)


def macro_f1(pred, labels) -> float:
    pred, labels = np.asarray(pred), np.asarray(labels)
    classes = np.unique(np.concatenate([pred, labels]))
    return float(np.mean([_f1(pred, labels, c) for c in classes])) if classes.size else 0.0


def mcc(pred, labels) -> float:
    """Matthews correlation (the multi-class R_K form; equals the binary formula for two classes); 0 if undefined."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    classes = np.unique(np.concatenate([pred, labels]))
    index = {c: i for i, c in enumerate(classes.tolist())}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.float64)
    for t, p in zip(labels.tolist(), pred.tolist(), strict=True):
        confusion[index[t], index[p]] += 1
    t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)
    correct, total = np.trace(confusion), confusion.sum()
    cov_tp = correct * total - t_sum @ p_sum
    cov_pp, cov_tt = total**2 - p_sum @ p_sum, total**2 - t_sum @ t_sum
    denominator = np.sqrt(cov_pp * cov_tt)
    return float(cov_tp / denominator) if denominator > 0 else 0.0


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x @ x) * (y @ y))
    return float((x @ y) / denominator) if denominator > 0 else 0.0


def rankdata(x) -> np.ndarray:
    """Ranks starting at 1, ties get the average of the ranks they span (scipy's 'average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    # Start index of each run of equal values, then the average rank of each run.
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    ends = np.concatenate([starts[1:], [len(x)]])
    average = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(x, y) -> float:
    return pearson(rankdata(x), rankdata(y))


_FUNCTIONS = {"accuracy": accuracy, "f1": f1, "macro_f1": macro_f1, "mcc": mcc, "pearson": pearson,
              "spearman": spearman}


def compute(names: tuple[str, ...], logits: np.ndarray, labels: np.ndarray, regression: bool) -> dict[str, float]:
    """The task's metrics from model outputs: argmax for classes, the single output for regression."""
    logits = np.asarray(logits)
    pred = logits.reshape(-1) if regression else logits.argmax(axis=-1)
    return {name: _FUNCTIONS[name](pred, labels) for name in names}
