import subprocess
import sys


def test_core_import_is_cheap():
    code = ("import sys, blora_export, blora_export.inject, blora_export.checkpoint, blora_export.gated_model; "
            "heavy = [m for m in ('onnx', 'onnxruntime', 'datasets', 'matplotlib') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_command_line_loads_without_torch():
    """`blora-export --help` and every command's --help read their defaults from the config dataclasses, which
    must stay importable without torch."""
    code = ("import sys; import blora_export.cli; "
            "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'transformers') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
