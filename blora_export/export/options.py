"""CompressOptions: every option of `blora-export compress`, with its default (light: the command line reads it)."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

PROFILES = ("speed", "size")
# 8-bit weights: "fast": int8 codes, onnxruntime's u8s8 kernel (exact with VNNI or ARM dot products; on AVX2-only
# x86 it adds pairs of products in int16 and saturates for large codes); "exact": uint8 codes with zero point 128,
# the u8u8 kernel, exact everywhere and slower; "auto": fast where this CPU runs u8s8 exactly, else exact.
KERNELS = ("auto", "fast", "exact")
_VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


def u8s8_is_exact_here() -> bool:
    """Whether onnxruntime's u8s8 kernel computes exactly on this CPU: ARM, or x86 with VNNI (read from
    /proc/cpuinfo; an x86 CPU whose flags cannot be read counts as AVX2-only)."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
    except OSError:
        return False
    return not _VNNI_FLAGS.isdisjoint(flags)


def resolve_kernel(kernel: str) -> str:
    """The kernel choice for 8-bit weights, "fast" or "exact", with "auto" decided for this CPU."""
    if kernel == "auto":
        return "fast" if u8s8_is_exact_here() else "exact"
    return kernel


@dataclass
class CompressOptions:
    profile: str = "speed"
    kernel: str = "auto"
    seq_len: int | None = None  # T for the BOP audit; default: the checkpoint's MAC profile length
    opset: int | None = None  # default: 21, or 25 when packed int2 weights are used
    verify: bool = True
    overwrite: bool = False
    validation_file: str | None = None
    trust_remote_code: bool = False
    timing_runs: int = 10  # latency runs for audit.md (0: skip)
    portable: bool = False  # standard ONNX operators only: skip the fused onnxruntime integer products (fuse.py)
    peft_adapter: bool = False  # also write the pruned fp32 adapter in PEFT's LoRA format to OUT/peft_adapter/
