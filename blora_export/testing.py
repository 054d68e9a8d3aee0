"""Tiny random encoders and a tiny tokenizer for tests, examples and offline smoke runs (no network)."""

from __future__ import annotations

from pathlib import Path

WORDS = ("good great fine nice love happy best fun bad awful poor sad hate worst boring dull the a movie film "
         "plot acting was is very not it this and but of to").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tokenizer(directory: str | Path):
    """A WordPiece BERT tokenizer over a small vocabulary, saved into `directory`."""
    from transformers import BertTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + list(WORDS)) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    tok.save_pretrained(str(directory))
    return tok


def tiny_config(model_type: str = "bert", num_labels: int = 2):
    from transformers import BertConfig, DebertaV2Config, DistilBertConfig, RobertaConfig

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
