"""Tiny random encoders and a tiny tokenizer for tests, examples and offline smoke runs (no network)."""

from __future__ import annotations

from pathlib import Path

WORDS = ("good great fine nice love happy best fun bad awful poor sad hate worst boring dull the a movie film "
         "plot acting was is very not it this and but of to").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tokenizer(directory: str | Path):
    """A WordPiece BERT tokenizer over a small vocabulary, saved into `directory`."""
    import inspect

    from transformers import BertTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + list(WORDS)) + "\n", encoding="utf-8")
    # transformers 5 takes the vocabulary as `vocab` (a `vocab_file` keyword is silently ignored there,
    # leaving only the special tokens); transformers 4 takes `vocab_file`.
    key = "vocab" if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab_file"
    tok = BertTokenizerFast(**{key: str(vocab)}, do_lower_case=True)
    tok.save_pretrained(str(directory))
    return tok


# Tiny configurations of further encoder families (tests/test_architectures.py): the common sizes plus what
# each family needs to build (an embedding size other than the hidden size: ALBERT and ELECTRA project it).
FAMILY_EXTRAS = {
    "xlm-roberta": dict(pad_token_id=0), "camembert": dict(pad_token_id=0), "mpnet": dict(pad_token_id=0),
    "electra": dict(embedding_size=16), "albert": dict(embedding_size=16),
    "deberta": dict(relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=32,
                    type_vocab_size=0),
    "modernbert": dict(global_attn_every_n_layers=2, local_attention=8, pad_token_id=0, bos_token_id=2,
                       eos_token_id=3, cls_token_id=2, sep_token_id=3),
    "ibert": dict(pad_token_id=0),  # its Linears are its own integer modules: not supported, one clear line
}


def tiny_config(model_type: str = "bert", num_labels: int = 2):
    from transformers import AutoConfig, BertConfig, DebertaV2Config, DistilBertConfig, RobertaConfig

    common = dict(vocab_size=len(SPECIAL) + len(WORDS), max_position_embeddings=64, num_labels=num_labels)
    if model_type == "bert":
        return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **common)
    if model_type == "roberta":
        return RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             pad_token_id=0, **common)
    if model_type == "deberta-v2":
        return DebertaV2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=32,
                               position_buckets=16, type_vocab_size=0, **common)
    if model_type == "distilbert":
        return DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, **common)
    if model_type in FAMILY_EXTRAS:
        return AutoConfig.for_model(model_type, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, **FAMILY_EXTRAS[model_type], **common)
    raise ValueError(f"no tiny config for {model_type!r}")


def make_tiny_model(directory: str | Path, model_type: str = "bert", seed: int = 0) -> Path:
    """Save a tiny randomly initialised encoder (with a tokenizer) as a from_pretrained-able directory."""
    import torch
    from transformers import AutoModel

    directory = Path(directory)
    torch.manual_seed(seed)
    AutoModel.from_config(tiny_config(model_type)).save_pretrained(str(directory))
    make_tokenizer(directory)
    return directory


def synthetic_sentiment(n: int, seed: int = 0) -> list[dict]:
    """A learnable toy task: label 1 iff the sentence holds more positive than negative words."""
    import random

    rng = random.Random(seed)
    pos, neg, filler = WORDS[:8], WORDS[8:16], WORDS[16:]
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        major, minor = (pos, neg) if label else (neg, pos)
        words = rng.choices(major, k=3) + rng.choices(minor, k=1) + rng.choices(filler, k=4)
        rng.shuffle(words)
        rows.append({"sentence": " ".join(words), "label": label})
    return rows


def make_tiny_variant(directory: str | Path, model_type: str = "bert", seed: int = 0, **config_overrides) -> Path:
    """Like make_tiny_model, but with random (non-zero) biases and LayerNorm affines, and config overrides
    (e.g. share_att_key=True for DeBERTa-v2, whose key/query projections then also run on the relative
    embeddings). Zero biases would let a broken bias path pass unnoticed."""
    import torch
    from transformers import AutoModel

    directory = Path(directory)
    torch.manual_seed(seed)
    cfg = tiny_config(model_type)
    for key, value in config_overrides.items():
        setattr(cfg, key, value)
    model = AutoModel.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.05)
            elif "LayerNorm.weight" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(directory))
    make_tokenizer(directory)
    return directory


# (weight bits, activation bits) cycled over the quantized Linears of a "blora" test checkpoint: integer-kernel
# layers (w <= 8, a <= 8), weight-only layers (a = 16/32), 16-/32-bit weights behind 8-bit activations.
TEST_WIDTHS = ((8, 8), (4, 8), (2, 8), (8, 4), (16, 8), (32, 8), (4, 16), (2, 32), (8, 32), (16, 16), (32, 32), (4, 4))
# Rank-gate log_alphas cycled over the adapters (max rank 4 -> 3 gates): ranks 4, 2, 1 (first gate closed), 3.
# Longer chains repeat each pattern's last gate (max rank 8: ranks 8, 2, 1, 3).
TEST_RANK_GATES = ((4.0, 4.0, 4.0), (4.0, -4.0, 4.0), (-4.0, 4.0, 4.0), (4.0, 4.0, -4.0))


def _open_levels(quantizer, bits: int) -> None:
    """Set a quantizer's gates so its deterministic width is `bits` (min width doubled per open gate)."""
    import torch

    k = 0
    while quantizer.min_bits * 2**k < bits:
        k += 1
    if quantizer.min_bits * 2**k != bits or k > len(quantizer.levels):
        raise ValueError(f"width {bits} is not reachable from {quantizer.min_bits} with levels {quantizer.levels}")
    values = [4.0] * k + [-4.0] * (len(quantizer.levels) - k)
    quantizer.log_alpha.data = torch.tensor(values, dtype=torch.float32)


def make_test_checkpoint(directory: str | Path, model_dir: str | Path, method: str = "blora", *, seed: int = 0,
                         max_rank: int = 4, targets="qkv", embedding_bits: int = 8, seq_len: int = 32,
                         n_validation: int = 64, per_channel_weights: bool = True, overwrite: bool = False,
                         deploy: str = "merged") -> Path:
    """A complete checkpoint built with the core API, no training: what `compress` tests need.

    method "blora": widths cycle through TEST_WIDTHS over the quantized Linears, rank gates through
    TEST_RANK_GATES over the adapters, the 4th adapter has lora_B == 0 (an adapter that does nothing), every third
    activation range is shrunk to 60% so clipping happens, the first FFN output projection (after GELU) with <=
    8-bit weights and activations gets an input grid starting at 0, and the first attention output projection with
    <= 8-bit widths a symmetric signed one (the others are affine with a negative part). "qat" and "lora" keep
    their fixed widths and full ranks. Adapters are non-zero; the head is re-aimed so both classes are predicted;
    validation.jsonl holds `n_validation` synthetic examples. `deploy="adapter"`: the adapters ship unmerged.
    """
    import math

    import torch
    from transformers import AutoTokenizer

    from .base_model import load_base_model
    from .checkpoint import CheckpointMeta, save_checkpoint
    from .config import ACT_WIDTHS, WIDTHS, BLoRAConfig
    from .gated_model import calibrate
    from .inject import prepare, wrapped_linears

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    # every width the export supports, not only the default lattice
    cfg = BLoRAConfig(method=method, max_rank=max_rank, targets=targets, embedding_bits=embedding_bits,
                      seq_len=seq_len, per_channel_weights=per_channel_weights, weight_bits=WIDTHS,
                      act_bits=ACT_WIDTHS, deploy=deploy).validate()
    labels = ["negative", "positive"]
    model = load_base_model(str(model_dir), len(labels), dict(enumerate(labels)))
    prepared = prepare(model, cfg)
    injection, profile = prepared.injection, prepared.profile
    head = injection.head
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    calib = [r["sentence"] for r in synthetic_sentiment(32, seed=seed + 1000)]
    batches = [dict(tokenizer(calib[i:i + 8], padding=True, return_tensors="pt")) for i in range(0, len(calib), 8)]
    calibrate(model, batches)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    with torch.no_grad():
        nonnegative_done = symmetric_done = False
        adapter_index = 0
        for i, (name, layer) in enumerate(wrapped_linears(model).items()):
            if layer.max_rank:
                layer.lora_A.copy_(randn(*layer.lora_A.shape) * 0.2)
                layer.lora_B.copy_(randn(*layer.lora_B.shape) * 0.03)
                layer.lora_E.copy_(1.0 + 0.3 * randn(*layer.lora_E.shape))
                if method == "blora":
                    pattern = TEST_RANK_GATES[adapter_index % len(TEST_RANK_GATES)]
                    n = layer.max_rank - 1  # longer chains repeat the pattern's last gate
                    gates_ = list(pattern[:n]) + [pattern[-1]] * max(0, n - len(pattern))
                    layer.rank_log_alpha.copy_(torch.tensor(gates_))
                    if adapter_index == 3:
                        layer.lora_B.zero_()
                adapter_index += 1
            if method != "blora":
                continue
            w_bits, a_bits = TEST_WIDTHS[i % len(TEST_WIDTHS)]
            _open_levels(layer.weight_quantizer, w_bits)
            _open_levels(layer.input_quantizer, a_bits)
            if i % 3 == 2:
                layer.input_quantizer.log_hi.add_(math.log(0.6))
            integer_layer = a_bits <= 8 and w_bits <= 8
            if not nonnegative_done and integer_layer and name.endswith("output.dense") \
                    and ".attention." not in name:  # an input grid that starts at 0, on an integer-kernel layer
                layer.input_quantizer.negative.fill_(False)
                nonnegative_done = True
            elif not symmetric_done and integer_layer and ".attention.output." in name:  # a symmetric input grid
                layer.input_quantizer.signed.fill_(True)
                symmetric_done = True
        for prefix in head:
            for p in model.get_submodule(prefix).parameters():
                p.add_(randn(*p.shape) * 0.5)

    validation = [{"text": r["sentence"], "label": r["label"]} for r in synthetic_sentiment(n_validation, seed)]
    _spread_predictions(model, tokenizer, [v["text"] for v in validation], gen)
    meta = CheckpointMeta(base_model=str(model_dir), base_fingerprint=prepared.fingerprint, blora=cfg.to_dict(),
                          adapted=injection.adapted, quantized=injection.quantized,
                          embeddings=injection.embeddings, head=injection.head, labels=labels,
                          mac_profile=profile.to_dict(), max_seq_length=seq_len)
    return save_checkpoint(directory, model, meta, tokenizer, summary={}, validation=validation,
                           overwrite=overwrite)


def _spread_predictions(model, tokenizer, texts: list[str], gen) -> None:
    """Re-aim a 2-class classifier along a random direction of its input features so that the logit margin
    has spread ~2 and mean ~0 on `texts`: a random tiny encoder barely depends on its input, and a test whose
    predictions are all one class would check nothing."""
    import torch

    # The output Linear of the head (RoBERTa's "classifier" is a module ending in out_proj).
    classifier = [m for m in model.get_submodule("classifier").modules() if isinstance(m, torch.nn.Linear)][-1]
    features = []
    handle = classifier.register_forward_hook(lambda _m, inputs, _o: features.append(inputs[0].detach()))
    try:
        with torch.no_grad():
            model.eval()
            model(**tokenizer(texts, padding=True, return_tensors="pt"))
    finally:
        handle.remove()
    x = features[0]
    direction = torch.randn(x.shape[-1], generator=gen)
    projected = x @ direction
    direction = direction * (2.0 / projected.std().clamp_min(1e-6))
    offset = float((x @ direction).mean())
    with torch.no_grad():
        classifier.weight.copy_(torch.stack([-direction / 2, direction / 2]))
        classifier.bias.copy_(torch.tensor([offset / 2, -offset / 2]))
