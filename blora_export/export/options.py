"""CompressOptions: every option of `blora-export compress`, with its default (light: the command line reads it)."""

from __future__ import annotations

from dataclasses import dataclass

PROFILES = ("speed", "size")
# 8-bit weights: int8 codes, onnxruntime's fast u8s8 kernel (exact with VNNI; on AVX2 without VNNI it saturates
# for large codes), or "exact": uint8 codes with zero point 128, the u8u8 kernel, exact everywhere and slower
KERNELS = ("fast", "exact")


@dataclass
class CompressOptions:
    profile: str = "speed"
    kernel: str = "fast"
    seq_len: int | None = None  # T for the BOP audit; default: the checkpoint's MAC profile length
    opset: int | None = None  # default: 21, or 25 when packed int2 weights are used
    verify: bool = True
    overwrite: bool = False
    validation_file: str | None = None
    trust_remote_code: bool = False
    timing_runs: int = 10  # latency runs for audit.md (0: skip)
    peft_adapter: bool = False  # also write the pruned fp32 adapter in PEFT's LoRA format to OUT/peft_adapter/
