"""The gates learn under a price: a higher fixed price closes more gates; under a budget the exported model's
audited BOPs are within it, also when the run is too short for the price to get there (the budget guarantee)."""

import json

import pytest
from train_support import FAST, assert_ok, train_cli, write_glue_sst2

from blora_export import gates, roles
from blora_export.checkpoint import load_checkpoint
from blora_export.export.pipeline import CompressOptions, compress


def _train(tmp_path, model_dir, data, name: str, *extra):
    out = tmp_path / name
    assert_ok(train_cli("--model", model_dir, "--data-dir", data, *FAST, "--max-steps", "16", "--gate-init", "1.0",
                        *extra, "--output-dir", out))
    model, meta = load_checkpoint(out)
    closed = sum(int((~gates.is_open(la)).sum()) for la in roles.gates(model) if la.numel())
    return json.loads((out / "summary.json").read_text()), closed, out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_glue_sst2(tmp_path_factory.mktemp("gates-data"), n_train=96, n_dev=16)


@pytest.mark.slow
def test_a_higher_price_closes_more_gates(tmp_path, tiny_bert_dir, data):
    weak, weak_closed, _ = _train(tmp_path, tiny_bert_dir, data, "free", "--bops-budget", "none",
                                  "--bops-weight", "0")
    strong, strong_closed, _ = _train(tmp_path, tiny_bert_dir, data, "priced", "--bops-budget", "none",
                                      "--bops-weight", "30", "--gate-lr", "200")
    assert strong_closed > weak_closed
    assert strong["bop_fraction"] < weak["bop_fraction"]
    assert min(w["weight"] for w in strong["widths"].values()) < 8  # narrower than the 8-bit start somewhere
    assert strong["price"]["final"] == 30 and strong["price"]["budget"] is None


@pytest.mark.slow
def test_budget_below_what_the_gates_reach_still_exports_within_it(tmp_path, tiny_bert_dir, data):
    """A budget the price cannot reach in a short run: the guarantee closes the cheapest levels, the summary and
    the audit of the export agree, and both are within the budget."""
    budget = 0.155  # for this tiny model at T = 16 the 8-bit start is at 17% of fp32 BOPs, W4A8 at 14.2%
    summary, _, ckpt = _train(tmp_path, tiny_bert_dir, data, "budget", "--bops-budget", str(budget),
                              "--gate-lr", "0.01")
    price = summary["price"]
    assert price["budget"] == budget and price["closed_by_budget"]  # the price alone did not get there
    assert summary["bop_fraction"] <= budget
    assert price["path"][-1][1] > price["path"][0][1]  # the price rose while over budget
    result = compress(ckpt, tmp_path / "out", CompressOptions(timing_runs=0, seq_len=16))
    whole = result.audit.totals.whole_model
    audited = whole.bops / whole.bops_fp32
    assert audited <= budget
    # one cost model: what training counted for the frozen gates is what the audit reads from the graph
    assert audited == pytest.approx(summary["bop_fraction"], rel=1e-9)
    assert summary["expected_bops"]["whole_model"]["bops"] == pytest.approx(whole.bops, rel=1e-6)


def test_budget_out_of_reach_is_one_line(tmp_path, tiny_bert_dir, data):
    result = train_cli("--model", tiny_bert_dir, "--data-dir", data, *FAST, "--max-steps", "2", "--bops-budget",
                       "0.01", "--output-dir", tmp_path / "out")
    assert result.exit_code == 2 and "below the least this model can reach" in result.output
    assert not (tmp_path / "out").exists()
