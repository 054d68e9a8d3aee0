import pytest

from blora_export.config import BLoRAConfig, ConfigError


def test_json_round_trip():
    cfg = BLoRAConfig(max_rank=4, targets=["query", "value"], weight_bits=(4, 8, 16), init_weight_bits=4)
    again = BLoRAConfig.from_json(cfg.to_json())
    assert again == BLoRAConfig(max_rank=4, targets=["query", "value"], weight_bits=(4, 8, 16), init_weight_bits=4)


@pytest.mark.parametrize("changes, match", [
    ({"max_rank": 0}, "max rank"),
    ({"bops_weight": -1.0}, "bops weight"),
    ({"weight_bits": (3, 8)}, "subset"),
    ({"weight_bits": (2, 8)}, "doublings"),
    ({"act_bits": (2, 4)}, "subset"),
    ({"init_weight_bits": 16, "weight_bits": (2, 4, 8)}, "initial width"),
    ({"method": "magic"}, "method"),
    ({"embedding_bits": 2}, "embedding bits"),
])
def test_validation_names_the_bad_option(changes, match):
    with pytest.raises(ConfigError, match=match):
        BLoRAConfig(**changes).validate()


def test_unknown_keys_are_rejected():
    with pytest.raises(ConfigError, match="unknown"):
        BLoRAConfig.from_dict({"max_rank": 4, "bogus": 1})


def test_baselines_fix_the_widths():
    lora = BLoRAConfig(method="lora")
    assert lora.weight_spec().allowed == (32,) and not lora.learn_rank and lora.embedding_width == 32
    qat = BLoRAConfig(method="qat", qat_w_bits=4, qat_a_bits=8)
    assert qat.weight_spec().allowed == (4,) and qat.act_spec().init_bits == 8 and not qat.act_spec().learn
