"""Pure pieces of the training stage: options, schedules, data order, sharding, optimizer-state round trip,
phase-2 gate freezing and the shared gate generator."""

import dataclasses
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from blora_export import gates
from blora_export.cli import main
from blora_export.config import BLoRAConfig, ConfigError
from blora_export.inject import inject, wrapped_linears
from blora_export.testing import make_tiny_model
from train.batching import Schedule, epoch_order, shard
from train.errors import TrainError
from train.optim import Optimizers, freeze_gates, param_groups
from train.options import TrainConfig
from train.price import Price
from train.schedules import Phases, lr_factor
from train.state import flatten_optimizer, unflatten_optimizer


def _cfg(**flags):
    return TrainConfig.from_flags({"model": "m", "task": "sst2", "output_dir": "out", **flags})


def test_options_json_round_trip_and_method_mapping():
    cfg = _cfg(method="qat", w_bits=4, a_bits=8, lora_targets="query,value", weight_bits=(4, 8, 16), max_rank=4,
               lr=1e-3, data_dir="d")
    again = TrainConfig.from_json(cfg.to_json())
    assert again == cfg
    blora = cfg.method
    assert blora.targets == ["query", "value"] and blora.qat_w_bits == 4 and blora.max_rank == 4
    assert blora.weight_spec().allowed == (4,)
    assert cfg.optim.lr == 1e-3 and cfg.data.data_dir == "d" and cfg.data.task == "sst2"
    assert _cfg().method == BLoRAConfig()  # unset knobs are BLoRAConfig's defaults
    assert _cfg(per_tensor_weights=True).method.per_channel_weights is False
    with pytest.raises(TrainError, match="unknown training options"):
        TrainConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(TrainError, match="unknown training options"):
        _cfg(bogus=1)
    with pytest.raises(ConfigError):
        _cfg(init_weight_bits=3).validate()
    with pytest.raises(TrainError, match="--gate-warmup-ratio plus --fixed-gate-ratio"):
        _cfg(gate_warmup_ratio=0.6, fixed_gate_ratio=0.5).validate()
    assert _cfg(bops_budget="none").method.bops_budget is None and _cfg(phase2_lr="none").optim.phase2_lr is None
    key = cfg.resume_key()
    assert "device" not in key and "max_steps" in key["optim"] and "max_rank" in key["method"]


def test_help_reads_each_default_from_its_dataclass():
    """The help text states the defaults the dataclasses hold (stated once, read by the command line)."""
    from blora_export.data import DataSpec
    from train.options import OptimSpec

    text = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    defaults = BLoRAConfig()
    for flag, value in (("--max-rank", defaults.max_rank), ("--init-weight-bits", defaults.init_weight_bits),
                        ("--init-act-bits", defaults.init_act_bits), ("--embedding-bits", defaults.embedding_bits),
                        ("--lora-alpha", defaults.lora_alpha), ("--bops-weight", defaults.bops_weight),
                        ("--bops-budget", defaults.bops_budget), ("--gate-init", defaults.gate_init),
                        ("--frozen-weight-grad-rows", defaults.frozen_weight_grad_rows),
                        ("--lr", OptimSpec.lr), ("--gate-lr", OptimSpec.gate_lr), ("--seed", OptimSpec.seed),
                        ("--max-seq-length", DataSpec.max_seq_length),
                        ("--eval-batch-size", TrainConfig.eval_batch_size)):
        described = re.search(re.escape(flag) + r" \S+ (.*?)(?= --|$)", text).group(1)
        assert f"[default: {value}]" in described, (flag, described)


def test_lr_schedule_and_phases():
    assert [round(lr_factor(s, 3, 10), 4) for s in range(10)] == [0.25, 0.5, 0.75, 1.0, 0.8571, 0.7143, 0.5714,
                                                                 0.4286, 0.2857, 0.1429]
    assert lr_factor(0, 0, 5) == 1.0
    optim = _cfg(max_steps=10, gate_warmup_ratio=0.3, fixed_gate_ratio=0.2, warmup_steps=2, phase2_lr=0.5).optim
    phases = Phases.plan(10, True, optim)
    assert (phases.gate_start, phases.main, phases.total) == (3, 8, 10)
    assert [phases.gates_learn(s) for s in range(10)] == [False] * 3 + [True] * 5 + [False] * 2
    factors = [phases.lr_factor(s) for s in range(10)]
    assert factors[:2] == [1 / 3, 2 / 3] and factors[7] == pytest.approx(1 / 6) and factors[8:] == [0.5, 0.25]
    plain = Phases.plan(10, False, optim)  # no gates: no warm-up of gates, no phase 2, one decay
    assert (plain.gate_start, plain.main) == (10, 10) and plain.lr_factor(9) == lr_factor(9, 2, 10)
    one_decay = Phases.plan(10, True, dataclasses.replace(optim, phase2_lr=None))
    assert [one_decay.lr_factor(s) for s in range(10)] == [lr_factor(s, 2, 10) for s in range(10)]


def test_price_rises_over_budget_and_falls_under_it():
    price = Price(0.0, 0.1, 2.0)
    price.update(1, 0.12)
    assert price.value == pytest.approx(0.4)
    price.update(2, 0.05)
    assert price.value == 0.0 and price.path == [[1, pytest.approx(0.4), 0.12], [2, 0.0, 0.05]]
    fixed = Price(3.0, None, 2.0)
    fixed.update(1, 0.5)
    assert fixed.value == 3.0


def test_data_order_is_a_pure_function_of_seed_and_epoch():
    assert (epoch_order(1, 3, 50) == epoch_order(1, 3, 50)).all()
    assert not (epoch_order(1, 3, 50) == epoch_order(1, 4, 50)).all()
    sched = Schedule(n_examples=10, batch_size=4, seed=7)
    assert sched.steps_per_epoch == 3
    epoch = np.concatenate([sched.indices(s) for s in range(3)])
    assert sorted(epoch.tolist()) == list(range(10))  # every example once per epoch
    assert (sched.indices(4) == Schedule(10, 4, 7).indices(4)).all()
    # With 3 processes, a last batch of 2 examples would leave one rank empty: it is dropped.
    assert Schedule(10, 4, 7, min_batch=3).steps_per_epoch == 2
    assert sched.steps_for(1.5) == 5


def test_shards_partition_the_global_batch():
    batch = {"input_ids": torch.arange(7 * 3).view(7, 3), "labels": torch.arange(7)}
    parts = [shard(batch, r, 3) for r in range(3)]
    assert torch.cat([p["labels"] for p in parts]).tolist() == list(range(7))
    assert all(p["input_ids"].shape[1] == 3 for p in parts)


def test_optimizer_state_round_trips_through_tensors_and_json():
    import json

    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW([{"params": params[:1], "lr": 0.1, "name": "a"}, {"params": params[1:], "lr": 0.01}])
    for _ in range(2):
        opt.zero_grad()
        sum((p**2).sum() for p in params).backward()
        opt.step()
    tensors, skeleton = flatten_optimizer(opt.state_dict())
    skeleton = json.loads(json.dumps(skeleton))  # really JSON
    restored_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = torch.optim.AdamW([{"params": restored_params[:1], "lr": 0.1}, {"params": restored_params[1:]}])
    opt2.load_state_dict(unflatten_optimizer(tensors, skeleton))
    for o, ps in ((opt, params), (opt2, restored_params)):
        o.zero_grad()
        sum((p**2).sum() for p in ps).backward()
        o.step()
    for a, b in zip(params, restored_params, strict=True):
        assert torch.equal(a, b)


@pytest.fixture(scope="module")
def injected(tmp_path_factory):
    from blora_export.base_model import load_base_model

    model = load_base_model(str(make_tiny_model(tmp_path_factory.mktemp("m"))), 2)
    inject(model, BLoRAConfig(max_rank=4, gate_init=1.0))
    return model


def test_param_groups_split_weights_gates_ranges(injected):
    head = ["bert.pooler", "classifier"]
    groups = {g["name"]: g for g in param_groups(injected, _cfg(lr=1e-3, gate_lr=0.2, range_lr=1e-4).optim, head)}
    assert set(groups) == {"weights", "gates", "ranges"}
    assert groups["gates"]["lr"] == 0.2 and groups["gates"]["weight_decay"] == 0.0
    assert groups["ranges"]["lr"] == 1e-4 and groups["ranges"]["weight_decay"] == 0.0
    assert groups["weights"]["weight_decay"] == 0.01
    n_trainable = sum(p.requires_grad for p in injected.parameters())
    assert sum(len(g["params"]) for g in groups.values()) == n_trainable
    optimizers = Optimizers(injected, _cfg().optim, head)
    assert isinstance(optimizers.main, torch.optim.AdamW) and isinstance(optimizers.gates, torch.optim.SGD)
    assert len(optimizers.gate_params) == len(groups["gates"]["params"])
    assert isinstance(Optimizers(injected, _cfg(gate_optimizer="adam").optim, head).gates, torch.optim.Adam)


def test_frozen_gates_sample_their_test_time_values(tmp_path):
    from blora_export.base_model import load_base_model

    model = load_base_model(str(make_tiny_model(tmp_path / "m")), 2)
    inject(model, BLoRAConfig(max_rank=4, gate_init=1.0, deploy="adapter", gate_sampling=True))
    layer = next(m for m in wrapped_linears(model).values() if m.max_rank)
    with torch.no_grad():
        layer.rank_log_alpha.copy_(torch.tensor([2.0, -0.5, -1.5]))
    params = Optimizers(model, _cfg().optim, ["bert.pooler", "classifier"]).gate_params
    assert freeze_gates(params) == len(params)
    assert not layer.rank_log_alpha.requires_grad and not layer.weight_quantizer.log_alpha.requires_grad
    layer.train()
    for _ in range(50):  # even sampled gates now equal the deterministic mask exactly
        assert layer.rank_mask().tolist() == [1.0, 1.0, 1.0, 0.0]
    assert layer.deterministic_rank() == 3
    assert freeze_gates(params) == 0  # idempotent: nothing left to freeze


def test_gate_generator_gives_identical_samples_and_default_is_unchanged():
    la = torch.zeros(1000)
    draws = []
    for _ in range(2):
        g = torch.Generator().manual_seed(5)
        torch.manual_seed(123)  # the global generator must not matter inside the block
        with gates.sampling_generator(g):
            draws.append(gates.sample(la))
        torch.manual_seed(999)
    assert torch.equal(draws[0], draws[1])
    torch.manual_seed(3)
    a = gates.sample(la)
    torch.manual_seed(3)
    assert torch.equal(a, gates.sample(la))  # outside the block: torch's global generator, as before
