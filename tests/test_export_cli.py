"""`blora-export compress` on the command line: a deployable output, one-line errors, clear help."""

import json

from click.testing import CliRunner
from export_support import checkpoint, save_with_wrong_activation_scale

from blora_export.cli import main


def _run(*args):
    return CliRunner().invoke(main, ["compress", *[str(a) for a in args]], catch_exceptions=True)


def _one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0], result.output
    assert "Traceback" not in result.output


def test_compress_cli_writes_a_deployable_directory(tmp_path):
    out = tmp_path / "out"
    result = _run(checkpoint("bert", "qat"), "--output-dir", out, "--profile", "size")
    assert result.exit_code == 0, result.output
    assert "verifying" in result.output and f"wrote {out}" in result.output
    deploy = json.loads((out / "deploy.json").read_text())
    assert deploy["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert deploy["labels"] == ["negative", "positive"] and deploy["max_length"] == 32
    audit = json.loads((out / "audit.json").read_text())
    assert audit["export"]["profile"] == "size" and audit["verify"]["agreement"] == 1.0


def test_compress_cli_errors_are_one_line(tmp_path, monkeypatch):
    _one_line_error(_run(tmp_path / "missing", "-o", tmp_path / "o1"), "does not exist")
    (tmp_path / "taken").mkdir()
    _one_line_error(_run(checkpoint("bert"), "-o", tmp_path / "taken"), "--overwrite")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sentence": "no text field"}\n')
    _one_line_error(_run(checkpoint("bert"), "-o", tmp_path / "o2", "--validation-file", bad), "'text'")
    _one_line_error(_run(checkpoint("bert"), "-o", tmp_path / "o3", "--seq-len", "999"), "max_position_embeddings")
    save_with_wrong_activation_scale(monkeypatch)
    _one_line_error(_run(checkpoint("bert"), "-o", tmp_path / "o4"), "nothing was written")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_compress_help_names_every_option():
    result = CliRunner().invoke(main, ["compress", "--help"])
    assert result.exit_code == 0
    for option in ("--output-dir", "--profile", "--seq-len", "--opset", "--verify / --no-verify", "--overwrite",
                   "--validation-file"):
        assert option in result.output
