"""The gates learn: a stronger BOP penalty (mu) closes more gates and lowers expected BOPs on the toy task."""

import json

import pytest
from train_support import FAST, assert_ok, train_cli, write_glue_sst2

from blora_export import gates
from blora_export.checkpoint import load_checkpoint


def _train(tmp_path, model_dir, data, mu: float):
    out = tmp_path / f"mu-{mu}"
    # A gate-lr high enough that 12 steps can move log_alpha from +1 past the closing threshold (-0.935).
    assert_ok(train_cli("--model", model_dir, "--data-dir", data, *FAST, "--max-steps", "12", "--gate-lr", "0.5",
                        "--gate-init", "1.0", "--bops-weight", mu, "--rank-weight", mu / 10, "--output-dir", out))
    model, _ = load_checkpoint(out)
    closed = sum(int((~gates.is_open(p.detach())).sum()) for n, p in model.named_parameters()
                 if n.endswith("log_alpha"))
    return json.loads((out / "summary.json").read_text()), closed


@pytest.mark.slow
def test_stronger_bop_penalty_closes_more_gates(tmp_path, tiny_bert_dir):
    data = write_glue_sst2(tmp_path / "data", n_train=96, n_dev=16)
    # With Adam a gate moves about gate-lr per step whenever its gradient has a steady sign, so even a tiny
    # penalty closes gates the task does not defend; on a random tiny model the task defends few. The weak
    # run is therefore mu = 0 (the gates follow the task alone).
    weak, weak_closed = _train(tmp_path, tiny_bert_dir, data, 0.0)
    strong, strong_closed = _train(tmp_path, tiny_bert_dir, data, 1.0)
    assert strong_closed > weak_closed
    assert strong["expected_bops"]["whole_model"]["bops"] < 0.9 * weak["expected_bops"]["whole_model"]["bops"]
    assert strong["bops"]["whole_model"]["reduction"] > weak["bops"]["whole_model"]["reduction"]
    # The strong penalty narrows widths below the 8-bit start somewhere and prunes ranks.
    assert min(w["weight"] for w in strong["widths"].values()) < 8
    assert min(strong["ranks"].values()) < max(weak["ranks"].values())
