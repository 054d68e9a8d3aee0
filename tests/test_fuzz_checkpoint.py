"""Fuzzed checkpoints: damaged trained.safetensors bytes and edited checkpoint.json either load as a valid
checkpoint or fail with CheckpointError (one line, exit 2 on the command line) - never another exception."""

from __future__ import annotations

import json
import os
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import ROOT, trained_checkpoint

from blora_export.checkpoint import META_FILE, WEIGHTS_FILE, CheckpointError, load_checkpoint
from blora_export.cli import main

SETTINGS = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20")), deadline=timedelta(seconds=60),
                    derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _built_first():
    trained_checkpoint()  # trains once, outside hypothesis' strategies (which must not draw other randomness)


def _work_copy(name: str) -> Path:
    work = ROOT / f"fuzz-{name}"
    if not work.exists():
        shutil.copytree(trained_checkpoint(), work)
    return work


def _loads_or_clean_error(ckpt: Path) -> None:
    try:
        load_checkpoint(ckpt)
    except CheckpointError as e:
        message = str(e)
        assert message and "\n" not in message.strip(), message
    # Any other exception type propagates and fails the example.


# ---- trained.safetensors ------------------------------------------------------------------------------------
def _original_weights() -> bytes:
    return (trained_checkpoint() / WEIGHTS_FILE).read_bytes()


def _header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


@st.composite
def damaged_weights(draw) -> bytes:
    data = bytearray(_original_weights())
    kind = draw(st.sampled_from(["truncate", "flip", "header", "length"]))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if kind == "length":
        data[:8] = draw(st.integers(0, 2**64 - 1)).to_bytes(8, "little")
        return bytes(data)
    end = _header_end(data) if kind == "header" else len(data)
    for _ in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, end - 1))
        data[i] ^= draw(st.integers(1, 255))
    return bytes(data)


@SETTINGS
@given(damaged_weights())
def test_fuzzed_weights_load_or_fail_cleanly(blob):
    ckpt = _work_copy("weights")
    (ckpt / WEIGHTS_FILE).write_bytes(blob)
    _loads_or_clean_error(ckpt)


# ---- checkpoint.json --------------------------------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6)


def _original_meta() -> dict:
    return json.loads((trained_checkpoint() / META_FILE).read_text())


@st.composite
def edited_meta(draw) -> str:
    meta = _original_meta()
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["delete", "value", "nested", "schema", "truncate"]))
        if kind == "truncate":
            text = json.dumps(meta)
            return text[: draw(st.integers(0, len(text) - 1))]
        key = draw(st.sampled_from(sorted(meta)))
        if kind == "delete":
            meta.pop(key, None)
        elif kind == "value":
            meta[key] = draw(JSON_VALUES)
        elif kind == "schema":
            meta["schema_version"] = draw(st.integers(-3, 5) | JSON_VALUES)
        elif isinstance(meta.get(key), dict) and meta[key]:
            sub = draw(st.sampled_from(sorted(meta[key])))
            meta[key][sub] = draw(JSON_VALUES)
        elif isinstance(meta.get(key), list) and meta[key]:
            meta[key][draw(st.integers(0, len(meta[key]) - 1))] = draw(JSON_VALUES)
    return json.dumps(meta)


@SETTINGS
@given(edited_meta())
def test_fuzzed_meta_loads_or_fails_cleanly(text):
    ckpt = _work_copy("meta")
    (ckpt / META_FILE).write_text(text)
    _loads_or_clean_error(ckpt)


# ---- the command line, for a few damaged checkpoints --------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate-weights", "flip-header", "meta-types", "meta-truncated"])
def test_cli_reports_damage_in_one_line(damage, tmp_path):
    ckpt = shutil.copytree(trained_checkpoint(), tmp_path / "ckpt")
    weights, meta = bytearray(_original_weights()), _original_meta()
    if damage == "truncate-weights":
        (ckpt / WEIGHTS_FILE).write_bytes(bytes(weights[: len(weights) - 7]))
    elif damage == "flip-header":
        weights[10] ^= 0xFF
        (ckpt / WEIGHTS_FILE).write_bytes(bytes(weights))
    elif damage == "meta-types":
        meta.update(adapted={"a": 1}, max_seq_length="16")
        (ckpt / META_FILE).write_text(json.dumps(meta))
    else:
        (ckpt / META_FILE).write_text(json.dumps(meta)[:100])
    result = CliRunner().invoke(main, ["compress", str(ckpt), "-o", str(tmp_path / "out"), "--no-verify"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert lines[-1].startswith("Error: ") and sum(line.startswith("Error:") for line in lines) == 1, result.output
    assert not (tmp_path / "out").exists()
