"""`compress --peft-adapter`: the pruned adapter in PEFT's LoRA format reproduces the fp32 gated model."""

import json

import pytest
import torch
from click.testing import CliRunner
from export_support import SEQ_LEN, base_dir, checkpoint, tokenize

from blora_export.checkpoint import load_checkpoint
from blora_export.cli import main
from blora_export.inject import strip, wrapped_linears
from blora_export.testing import synthetic_sentiment

peft = pytest.importorskip("peft")


@torch.no_grad()
def fp32_gated_reference(ckpt):
    """The checkpoint model with deterministic gates and every quantizer bypassed: plain Linears holding
    W0 + scaling * B diag(g * e) A, fp32 embeddings, the trained head."""
    model, meta = load_checkpoint(ckpt)
    reference = strip(model).eval()
    for name, layer in wrapped_linears(model).items():
        reference.get_submodule(name).weight.copy_(layer.merged_weight())
    return reference, model, meta


def test_peft_adapter_reproduces_the_fp32_gated_model(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    ckpt, out = checkpoint("bert"), tmp_path / "out"
    result = CliRunner().invoke(main, ["compress", str(ckpt), "-o", str(out), "--no-verify", "--peft-adapter"])
    assert result.exit_code == 0, result.output
    adapter = out / "peft_adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    reference, model, meta = fp32_gated_reference(ckpt)
    wrapped = wrapped_linears(model)
    ranks = {n: wrapped[n].deterministic_rank() for n in meta.adapted}
    assert config["rank_pattern"] == ranks and sorted(config["target_modules"]) == sorted(meta.adapted)
    assert set(ranks.values()) == {1, 2, 3, 4}  # pruned ranks differ per module (non-vacuous)
    for name, r in ranks.items():  # PEFT's scaling alpha/r equals training's lora_alpha / max_rank
        assert config["alpha_pattern"][name] / r == pytest.approx(wrapped[name].scaling)
    assert config["modules_to_save"] == list(meta.head)

    base = AutoModelForSequenceClassification.from_pretrained(str(base_dir("bert")), num_labels=2)
    peft_model = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
    for name, r in ranks.items():
        assert peft_model.base_model.model.get_submodule(name).lora_A["default"].weight.shape[0] == r

    tokenizer = AutoTokenizer.from_pretrained(str(ckpt))
    texts = [r["sentence"] for r in synthetic_sentiment(16, seed=3)]
    feed = {k: torch.from_numpy(v) for k, v in tokenize(tokenizer, texts, ["input_ids", "attention_mask",
                                                                        "token_type_ids"], SEQ_LEN).items()}
    with torch.no_grad():
        expected = reference(**feed).logits
        got = peft_model(**feed).logits
        no_adapter = strip(model).eval()(**feed).logits
    assert (expected - no_adapter).abs().max() > 1e-3  # the adapters matter
    # fp32: PEFT computes x W0^T + scaling (x A^T) B^T unmerged, so rounding differs in the last bits (the
    # re-aimed test head amplifies them to ~4e-5 on logits of size ~2). Run in float64, the two agree to the
    # float32 rounding of the stored factors and merged weights (~1e-7).
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        expected64 = reference.double()(**feed).logits
        got64 = peft_model.double()(**feed).logits
    torch.testing.assert_close(got64, expected64, atol=1e-6, rtol=1e-6)


def test_no_peft_adapter_by_default(tmp_path):
    from blora_export.export.pipeline import CompressOptions, compress

    out = tmp_path / "out"
    compress(checkpoint("bert", "qat"), out, CompressOptions(verify=False, timing_runs=0))
    assert not (out / "peft_adapter").exists()
