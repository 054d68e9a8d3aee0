"""Reading GLUE directories and labelled files: columns, labels, quoting, malformed rows, and the hub path."""

from pathlib import Path

import pytest

from blora_export.data import DataError, DataSpec, load, read_table

GLUE_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


def _cfg(tmp_path, task, **kw) -> DataSpec:
    return DataSpec(task=task, **kw)


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_sst2_tsv_keeps_unbalanced_quotes(tmp_path):
    d = tmp_path / "SST-2"
    _write(d / "train.tsv", ["sentence\tlabel", 'a "quoted start only\t1', "plain text\t0"])
    _write(d / "dev.tsv", ["sentence\tlabel", 'it \'s "fine\t1'])
    data = load(_cfg(tmp_path, "sst2", data_dir=str(d)))
    assert [e.text for e in data.train] == ['a "quoted start only', "plain text"]
    assert [e.label for e in data.train] == [1, 0] and data.validation[0].text == 'it \'s "fine'
    assert data.labels == ["negative", "positive"]


def test_cola_has_no_header(tmp_path):
    d = tmp_path / "CoLA"
    _write(d / "train.tsv", ["gj04\t1\t\tThe book was read.", "gj04\t0\t*\tBook the read was."])
    _write(d / "dev.tsv", ["gj04\t1\t\tIt rains."])
    data = load(_cfg(tmp_path, "cola", data_dir=str(d)))
    assert [(e.text, e.label) for e in data.train] == [("The book was read.", 1), ("Book the read was.", 0)]
    assert data.task.metric == "mcc"


def test_mrpc_pairs_and_string_labels_of_rte_mnli(tmp_path):
    d = tmp_path / "MRPC"
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    _write(d / "train.tsv", [header, "1\t1\t2\tHe said.\tHe stated."])
    _write(d / "dev.tsv", [header, "0\t3\t4\tA cat.\tA dog."])
    data = load(_cfg(tmp_path, "mrpc", data_dir=str(d)))
    assert data.train[0].to_dict() == {"text": "He said.", "text_pair": "He stated.", "label": 1}

    d = tmp_path / "RTE"
    _write(d / "train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\tA man.\tA person.\tentailment",
                             "1\tA man.\tA cat.\tnot_entailment"])
    _write(d / "dev.tsv", ["index\tsentence1\tsentence2\tlabel", "0\tx\ty\tnot_entailment"])
    data = load(_cfg(tmp_path, "rte", data_dir=str(d)))
    assert [e.label for e in data.train] == [0, 1] and data.validation[0].label == 1

    d = tmp_path / "MNLI"
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label"
    _write(d / "train.tsv", [header, "0\t1\t2\tg\tP.\tH.\tneutral\tneutral"])
    _write(d / "dev_matched.tsv", [header, "0\t1\t2\tg\tP.\tH.\tcontradiction\tcontradiction"])
    data = load(_cfg(tmp_path, "mnli", data_dir=str(d)))
    assert data.train[0].label == 1 and data.validation[0].label == 2
    assert data.labels == ["entailment", "neutral", "contradiction"]


def test_stsb_scores_and_qqp_malformed_rows(tmp_path):
    d = tmp_path / "STS-B"
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    _write(d / "train.tsv", [header, "0\tg\tf\ty\t0\ts\ts\tA.\tB.\t3.800"])
    _write(d / "dev.tsv", [header, "0\tg\tf\ty\t0\ts\ts\tC.\tD.\t0.5"])
    data = load(_cfg(tmp_path, "stsb", data_dir=str(d)))
    assert data.train[0].label == pytest.approx(3.8) and data.labels == ["score"]
    assert data.task.problem_type == "regression"

    d = tmp_path / "QQP"
    header = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
    broken = "1\t3\t4\tbroken line without fields"
    _write(d / "train.tsv", [header, "0\t1\t2\tWhy?\tHow?\t0", broken, "2\t5\t6\tA?\tB?\t1"])
    _write(d / "dev.tsv", [header, "0\t1\t2\tWhy?\tWhy not?\t1"])
    data = load(_cfg(tmp_path, "qqp", data_dir=str(d), max_train_samples=5))
    assert [e.label for e in data.train] == [0, 1] and data.skipped == 1


def test_classification_files(tmp_path):
    train = _write(tmp_path / "train.csv", ["review,stars", '"good, really",pos', "bad,neg", "meh,neutral"])
    dev = _write(tmp_path / "dev.jsonl", ['{"review": "fine", "stars": "pos"}'])
    data = load(_cfg(tmp_path, "classification", train_file=str(train), validation_file=str(dev),
                     text_column="review", label_column="stars"))
    assert data.labels == ["neg", "neutral", "pos"]  # sorted label set of the train file
    assert [(e.text, e.label) for e in data.train] == [("good, really", 2), ("bad", 0), ("meh", 1)]
    assert data.task.metrics == ("accuracy", "macro_f1")

    # Integer labels sort numerically; a JSON list works; default columns are text/label.
    train = _write(tmp_path / "t.json", ['[{"text": "a", "label": 10}, {"text": "b", "label": 2}]'])
    dev = _write(tmp_path / "d.tsv", ["text\tlabel", "c\t10"])
    data = load(_cfg(tmp_path, "classification", train_file=str(train), validation_file=str(dev)))
    assert data.labels == ["2", "10"] and data.validation[0].label == 1

    bad_dev = _write(tmp_path / "bad.tsv", ["text\tlabel", "c\t7"])
    with pytest.raises(DataError, match="label '7' is not one of"):
        load(_cfg(tmp_path, "classification", train_file=str(train), validation_file=str(bad_dev)))
    with pytest.raises(DataError, match="no column 'body'"):
        load(_cfg(tmp_path, "classification", train_file=str(train), validation_file=str(dev), text_column="body"))
    with pytest.raises(DataError, match="unsupported file type"):
        read_table(_write(tmp_path / "x.txt", ["hi"]))


def test_glue_dir_without_files_says_what_is_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="GLUE layout"):
        load(_cfg(tmp_path, "rte", data_dir=str(tmp_path / "empty")))


def test_offline_hub_fails_with_advice(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="--data-dir DIR .*--train-file/--validation-file"):
        load(_cfg(tmp_path, "sst2"))


@pytest.mark.skipif(not (GLUE_ROOT / "SST-2" / "train.tsv").is_file(), reason="shared GLUE files not present")
def test_real_glue_files():
    sst2 = load(DataSpec(task="sst2", data_dir=str(GLUE_ROOT / "SST-2")))
    assert (len(sst2.train), len(sst2.validation)) == (67349, 872)
    assert sum(e.label for e in sst2.validation) == 444
    rte = load(DataSpec(task="rte", data_dir=str(GLUE_ROOT / "RTE")))
    assert (len(rte.train), len(rte.validation)) == (2490, 277)
    assert sum(e.label == 0 for e in rte.train) == 1249  # entailment


GLUE_FILES = {  # task: (directory, header, a row) as the official download writes them
    "cola": ("CoLA", None, "gj04\t1\t\tThe book was read."),
    "sst2": ("SST-2", "sentence\tlabel", "a fine film\t1"),
    "mrpc": ("MRPC", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t1\t2\tHe said.\tHe stated."),
    "qqp": ("QQP", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "0\t1\t2\tWhy?\tHow?\t0"),
    "stsb": ("STS-B", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
             "0\tg\tf\ty\t0\ts\ts\tA.\tB.\t3.8"),
    "mnli": ("MNLI", "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label",
             "0\t1\t2\tg\tP.\tH.\tneutral\tneutral"),
    "qnli": ("QNLI", "index\tquestion\tsentence\tlabel", "0\tWho?\tHe.\tentailment"),
    "rte": ("RTE", "index\tsentence1\tsentence2\tlabel", "0\tA man.\tA person.\tentailment"),
    "wnli": ("WNLI", "index\tsentence1\tsentence2\tlabel", "0\tA.\tB.\t1"),
}


@pytest.mark.parametrize("task", list(GLUE_FILES))
def test_every_glue_task_reads_files_that_start_with_a_byte_order_mark(task, tmp_path):
    directory, header, row = GLUE_FILES[task]
    d = tmp_path / directory
    d.mkdir()
    dev = ["dev_matched.tsv", "dev_mismatched.tsv"] if task == "mnli" else ["dev.tsv"]
    for name in ["train.tsv", *dev]:
        lines = ([header] if header else []) + [row, row]
        (d / name).write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    data = load(_cfg(tmp_path, task, data_dir=str(d)))
    assert len(data.train) == 2 and len(data.validation) == 2
    assert not data.train[0].text.startswith("\ufeff")


def test_mnli_mismatched_reads_its_own_dev_file(tmp_path):
    d = tmp_path / "MNLI"
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label"
    _write(d / "train.tsv", [header, "0\t1\t2\tg\tP.\tH.\tneutral\tneutral"])
    _write(d / "dev_matched.tsv", [header, "0\t1\t2\tg\tM.\tH.\tentailment\tentailment"])
    _write(d / "dev_mismatched.tsv", [header, "0\t1\t2\tg\tX.\tH.\tcontradiction\tcontradiction"])
    data = load(_cfg(tmp_path, "mnli-mm", data_dir=str(d)))
    assert data.validation[0].text == "X." and data.validation[0].label == 2


def test_one_label_written_four_ways_is_one_label(tmp_path):
    rows = ['{"text": "a", "label": 1}', '{"text": "b", "label": 1.0}', '{"text": "c", "label": "1"}',
            '{"text": "d", "label": 0}']
    path = _write(tmp_path / "train.jsonl", rows)
    data = load(_cfg(tmp_path, "classification", train_file=str(path), validation_file=str(path)))
    assert len(data.labels) == 2 and len({e.label for e in data.train[:3]}) == 1


@pytest.mark.parametrize("row, fragment", [('{"text": ["a", "list"], "label": 1}', "holds list .*, not text"),
                                           ('{"text": "a", "label": true}\n{"text": "b", "label": 0}', "bool")])
def test_text_that_is_not_a_string_and_mixed_bool_labels_are_errors(row, fragment, tmp_path):
    path = _write(tmp_path / "train.jsonl", [*row.splitlines(), '{"text": "z", "label": 0}',
                                             '{"text": "y", "label": 1}'])
    with pytest.raises(DataError, match=fragment):
        load(_cfg(tmp_path, "classification", train_file=str(path), validation_file=str(path)))
