"""Shared, cached artefacts for the reliability tests: a tiny base model, toy SST-2 data and one tiny checkpoint
trained through the real `train` command. Built once per session; tests copy what they change."""

from __future__ import annotations

import atexit
import functools
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from train_support import FAST, assert_ok, train_cli, write_glue_sst2

from blora_export.testing import make_tiny_model

ROOT = Path(tempfile.mkdtemp(prefix="blora-export-reliability-"))
atexit.register(shutil.rmtree, ROOT, ignore_errors=True)


@functools.cache
def base_model() -> Path:
    return make_tiny_model(ROOT / "base-bert", "bert", seed=0)


@functools.cache
def other_base_model() -> Path:
    """Same architecture, other random weights: a base model a checkpoint must refuse."""
    return make_tiny_model(ROOT / "other-bert", "bert", seed=1)


@functools.cache
def sst2_data() -> Path:
    return write_glue_sst2(ROOT / "sst2", n_train=48, n_dev=16)


def train_args(output_dir: Path, *extra) -> list:
    return ["--model", base_model(), "--data-dir", sst2_data(), *FAST, "--device", "cpu", "--seed", "7",
            "--output-dir", output_dir, *extra]


@functools.cache
def trained_checkpoint() -> Path:
    """A 2-step checkpoint from `blora-export train` (read-only: copy it before changing it)."""
    out = ROOT / "ckpt"
    assert_ok(train_cli(*train_args(out, "--max-steps", "2")))
    return out


def copy_checkpoint(dest: Path) -> Path:
    shutil.copytree(trained_checkpoint(), dest)
    return dest


@functools.cache
def exported_model() -> Path:
    """`blora-export compress --no-verify` of trained_checkpoint() (read-only: copy it before changing it)."""
    from click.testing import CliRunner

    from blora_export.cli import main

    out = ROOT / "export"
    assert_ok(CliRunner().invoke(main, ["compress", str(trained_checkpoint()), "-o", str(out), "--no-verify"]))
    return out


def copy_export(dest: Path) -> Path:
    shutil.copytree(exported_model(), dest)
    return dest


def truncate_file(path: Path) -> None:
    """Keep the first half of the file: a download or a write cut off."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garble_safetensors_header(path: Path) -> None:
    """Overwrite the start of a safetensors file's JSON header (its length field stays)."""
    data = bytearray(path.read_bytes())
    data[8:16] = b"\x00garbage"
    path.write_bytes(bytes(data))


def tree_hashes(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def cli_subprocess(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """`blora-export ARGS` in a fresh interpreter (what a user sees on stdout/stderr)."""
    code = "import sys; from blora_export.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *[str(a) for a in args]], capture_output=True, text=True,
                          timeout=timeout)
