"""The size profile's word table: 4-bit rows, re-quantized from the trained table.

The word table is most of a small encoder's file (all-MiniLM-L6-v2: 11.7M of 22.7M parameters). It is frozen and
costs no MACs, so its width is not learned; training sees it at `--embedding-bits` (default 8). The size profile
narrows it after training to 4-bit rows with least-error row ranges (training's own quantizer), in the model
itself, so the plan, the integer-exact reference, verification and `eval --ckpt` all see the table that ships and
the export stays exact. Measured accuracy cost: BENCHMARKS.md ("The size profile's 4-bit word table").
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..inject import set_module
from ..lora import QuantizedEmbedding
from ..ste import FLOAT_BITS

SIZE_PROFILE_TABLE_BITS = 4


@dataclass(frozen=True)
class NarrowedTable:
    name: str
    trained_bits: int
    bits: int


def narrow_word_table(model: nn.Module, profile: str) -> NarrowedTable | None:
    """In the size profile, replace the model's quantized input word table by its 4-bit re-quantization (in
    place); None when nothing changes (speed profile, an fp32 table, or a table trained at <= 4 bits)."""
    table = model.get_input_embeddings()
    if profile != "size" or not isinstance(table, QuantizedEmbedding):
        return None
    if not SIZE_PROFILE_TABLE_BITS < table.bits < FLOAT_BITS:
        return None
    name = next(n for n, m in model.named_modules() if m is table)
    narrowed = QuantizedEmbedding(table.base, SIZE_PROFILE_TABLE_BITS).train(table.training)
    set_module(model, name, narrowed)
    return NarrowedTable(name, table.bits, SIZE_PROFILE_TABLE_BITS)
