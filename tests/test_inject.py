import pytest
import torch

from blora_export.base_model import load_base_model
from blora_export.config import BLoRAConfig
from blora_export.inject import inject, wrapped_embeddings, wrapped_linears
from blora_export.targets import TargetError, resolve_targets


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["blora", "lora", "qat"])
def test_only_adapters_gates_ranges_and_head_train(tiny_model_dir, method):
    model = load_base_model(str(tiny_model_dir), 3)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    inj = inject(model, BLoRAConfig(method=method))
    assert len(inj.adapted) == 6 and len(inj.quantized) > len(inj.adapted)
    names = trainable(model)
    for n in names:
        is_adapter = any(k in n for k in ("lora_A", "lora_B", "lora_E", "rank_log_alpha"))
        is_gate_or_range = n.endswith(("_quantizer.log_alpha", "_quantizer.log_hi", "_quantizer.log_lo"))
        is_head = any(n.startswith(h + ".") for h in inj.head)
        assert is_adapter or is_gate_or_range or is_head, n
        assert "embeddings" not in n or is_head
    assert any("lora_B" in n for n in names) and any(n.startswith("classifier") for n in names)
    gated = any(n.endswith("log_alpha") for n in names)
    assert gated == (method == "blora")
    # every original tensor is still there, frozen and unchanged, under the wrapper's `base`
    state = dict(model.named_parameters())
    for n, t in base.items():
        wrapped = n.replace(".weight", ".base.weight").replace(".bias", ".base.bias")
        current = state.get(n, state.get(wrapped))
        assert current is not None and torch.equal(current, t), n
        assert current.requires_grad == any(n.startswith(h + ".") for h in inj.head)


def test_every_encoder_linear_and_embedding_is_wrapped(tiny_bert_dir):
    model = load_base_model(str(tiny_bert_dir), 2)
    inj = inject(model, BLoRAConfig(targets="all-linear"))
    assert set(wrapped_linears(model)) == set(inj.quantized) == set(inj.adapted)
    assert len(inj.quantized) == 12
    assert set(wrapped_embeddings(model)) == {f"bert.embeddings.{k}_embeddings" for k in
                                              ("word", "position", "token_type")}
    # pooler and classifier stay plain fp32 Linears
    assert type(model.classifier) is torch.nn.Linear and type(model.bert.pooler.dense) is torch.nn.Linear


def test_resolver_explicit_names_and_loud_failure(tiny_bert_dir):
    model = load_base_model(str(tiny_bert_dir), 2)
    assert resolve_targets(model, ["attention.self.query"]) == [
        "bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.attention.self.query"]
    with pytest.raises(TargetError, match="match no Linear"):
        resolve_targets(model, ["not_a_module"])


@pytest.mark.parametrize("model_type", ["distilbert", "roberta"])
def test_registry_covers_other_families(tmp_path, model_type):
    from blora_export.testing import make_tiny_model

    model = load_base_model(str(make_tiny_model(tmp_path, model_type)), 2)
    inj = inject(model, BLoRAConfig())
    assert len(inj.adapted) == 6 and inj.head
    out = model(input_ids=torch.tensor([[2, 8, 9, 3]])).logits
    assert out.shape == (1, 2)
