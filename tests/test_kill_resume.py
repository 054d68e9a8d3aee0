"""A real SIGKILL (and SIGINT) of `blora-export train` in a subprocess: --resume then reaches exactly the state of
an uninterrupted run with the same seed. (test_train_resume.py interrupts in-process through a test hook.)"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from reliability_support import train_args
from train_support import assert_ok, train_cli, trained_tensors

STEPS = ["--max-steps", "8", "--save-steps", "2"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("straight") / "ckpt"
    assert_ok(train_cli(*train_args(out, *STEPS)))
    return trained_tensors(out)


def _start(out: Path) -> subprocess.Popen:
    code = "import sys; from blora_export.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "train", *[str(a) for a in train_args(out, *STEPS)]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _interrupt_after_first_snapshot(out: Path, sig: int) -> tuple[int, str]:
    """Start train, deliver `sig` as soon as a resume snapshot exists; returns (exit status, stderr)."""
    state = Path(str(out) + ".state") / "latest" / "state.json"
    proc = _start(out)
    deadline = time.monotonic() + 240
    try:
        while not state.is_file():
            if proc.poll() is not None:
                pytest.fail(f"train ended (status {proc.returncode}) before its first snapshot: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("no resume snapshot within 240 s")
            time.sleep(0.02)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if out.exists():
        pytest.skip("the run finished before the signal arrived (machine too fast for 8 steps)")
    return proc.returncode, stderr


def _assert_same(reference: dict, out: Path) -> None:
    resumed = trained_tensors(out)
    assert resumed.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(resumed[key], value), key


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, reference):
    out = tmp_path / "ckpt"
    status, _ = _interrupt_after_first_snapshot(out, signal.SIGKILL)
    assert status == -signal.SIGKILL
    state = Path(str(out) + ".state")
    step = json.loads((state / "latest" / "state.json").read_text())["step"]
    assert 2 <= step < 8 and step % 2 == 0
    # Without --resume the interrupted run is protected.
    refused = train_cli(*train_args(out, *STEPS))
    assert refused.exit_code == 2 and "--resume" in refused.output
    assert_ok(train_cli(*train_args(out, *STEPS, "--resume")))
    assert not state.exists()
    _assert_same(reference, out)


@pytest.mark.slow
def test_sigint_exits_with_a_resume_hint_then_resumes(tmp_path, reference):
    out = tmp_path / "ckpt"
    status, stderr = _interrupt_after_first_snapshot(out, signal.SIGINT)
    assert status == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("Interrupted:") and "--resume" in last and ".state" in last, stderr
    assert_ok(train_cli(*train_args(out, *STEPS, "--resume")))
    _assert_same(reference, out)
