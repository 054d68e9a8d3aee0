"""Task metrics against values computed by hand (and scipy where it is installed)."""

import math

import numpy as np
import pytest

from blora_export.data import GLUE, classification_task, metrics

PRED = [1, 0, 1, 1, 0, 1, 0, 0]
GOLD = [1, 0, 0, 1, 0, 1, 1, 0]  # TP 3, TN 3, FP 1, FN 1


def test_accuracy_f1_mcc_by_hand():
    assert metrics.accuracy(PRED, GOLD) == 6 / 8
    assert metrics.f1(PRED, GOLD) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # 0.75
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (9 - 1) / sqrt(4*4*4*4) = 0.5
    assert metrics.mcc(PRED, GOLD) == pytest.approx(0.5)
    assert metrics.mcc([1, 1, 1], [0, 1, 0]) == 0.0  # a constant prediction: undefined -> 0
    assert metrics.mcc([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    assert metrics.f1([0, 0], [0, 0]) == 0.0  # no positives at all


def test_multiclass_mcc_and_macro_f1_by_hand():
    pred, gold = [0, 1, 2, 2, 1, 0], [0, 1, 2, 1, 1, 2]
    # Confusion rows=true: [[1,0,0],[0,2,1],[1,0,1]]; c=4, s=6, t=[1,3,2], p=[2,2,2]
    # (4*6 - (2+6+4)) / sqrt((36 - 12) * (36 - 14)) = 12 / sqrt(528)
    assert metrics.mcc(pred, gold) == pytest.approx(12 / math.sqrt(528))
    # per class F1: class 0: tp1 fp1 fn0 -> 2/3; class 1: tp2 fp0 fn1 -> 4/5; class 2: tp1 fp1 fn1 -> 1/2
    assert metrics.macro_f1(pred, gold) == pytest.approx((2 / 3 + 4 / 5 + 1 / 2) / 3)


def test_pearson_and_spearman_by_hand():
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 9.0]
    # deviations x: -1.5,-.5,.5,1.5; y (mean 5): -3,-1,0,4 -> cov 4.5+.5+0+6 = 11; |x|^2 = 5, |y|^2 = 26
    assert metrics.pearson(x, y) == pytest.approx(11 / math.sqrt(5 * 26))
    assert metrics.spearman(x, y) == pytest.approx(1.0)  # monotone
    assert metrics.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # Ties get average ranks: [10, 20, 20, 30] -> [1, 2.5, 2.5, 4]
    assert metrics.rankdata([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert metrics.rankdata([3, 1, 3, 3]).tolist() == [3.0, 1.0, 3.0, 3.0]
    # rho of [1,2,2,3] vs [1,2,3,4]: ranks [1,2.5,2.5,4] vs [1,2,3,4] -> pearson = 4.5 / sqrt(4.5 * 5)
    assert metrics.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert metrics.pearson([1, 1, 1], [1, 2, 3]) == 0.0  # constant input: undefined -> 0


def test_against_scipy_on_random_data():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 200).astype(float), rng.normal(size=200)
    assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert metrics.pearson(a, b) == pytest.approx(stats.pearsonr(a, b).statistic)


@pytest.mark.parametrize("task,expected", [
    ("cola", {"mcc": 0.5, "accuracy": 0.75}),
    ("sst2", {"accuracy": 0.75}), ("qnli", {"accuracy": 0.75}), ("rte", {"accuracy": 0.75}),
    ("wnli", {"accuracy": 0.75}),
    ("mrpc", {"accuracy": 0.75, "f1": 0.75}), ("qqp", {"accuracy": 0.75, "f1": 0.75}),
])
def test_glue_classification_metrics_from_logits(task, expected):
    logits = np.array([[0.0, 1.0] if p else [1.0, 0.0] for p in PRED])
    t = GLUE[task]
    assert metrics.compute(t.metrics, logits, np.array(GOLD), t.is_regression) == pytest.approx(expected)
    assert t.metric == list(expected)[0]


def test_mnli_is_matched_accuracy_over_three_classes():
    t = GLUE["mnli"]
    logits = np.eye(3)[[0, 1, 2, 2]]
    assert metrics.compute(t.metrics, logits, np.array([0, 1, 2, 0]), False) == {"accuracy": 0.75}
    assert t.dev_file == "dev_matched.tsv" and t.num_labels == 3


def test_stsb_is_regression_with_pearson_and_spearman():
    t = GLUE["stsb"]
    assert t.is_regression and t.num_labels == 1 and t.problem_type == "regression"
    result = metrics.compute(t.metrics, np.array([[1.0], [2.0], [3.0], [4.0]]), np.array([2.0, 4.0, 5.0, 9.0]), True)
    assert result == pytest.approx({"pearson": 11 / math.sqrt(130), "spearman": 1.0})


def test_generic_classification_metrics():
    assert classification_task("t", None, "y", ("a", "b")).metrics == ("accuracy", "f1")
    t = classification_task("t", None, "y", ("a", "b", "c"))
    logits = np.eye(3)[[0, 1, 2, 2, 1, 0]]
    result = metrics.compute(t.metrics, logits, np.array([0, 1, 2, 1, 1, 2]), False)
    assert result == pytest.approx({"accuracy": 4 / 6, "macro_f1": (2 / 3 + 4 / 5 + 1 / 2) / 3})
