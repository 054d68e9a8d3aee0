"""Deploying a compress output: blora_export.runtime, and plain onnxruntime + AutoTokenizer with no project code."""

import json
import subprocess
import sys

import numpy as np
import pytest
from export_support import checkpoint, compressed, tokenize

from blora_export import runtime
from blora_export.checkpoint import load_checkpoint, read_validation
from blora_export.export.plan import make_plan
from blora_export.export.reference import integer_exact
from blora_export.export.verify import compare, noise_floor, torch_logits


def plan_of(model, meta):
    return make_plan(model, meta.quantized, meta.adapted, meta.profile, meta.config.method)

PLAIN_DEPLOYMENT = r"""
import json, sys
import numpy as np
import onnxruntime as ort
from transformers import AutoTokenizer

out, texts = sys.argv[1], json.loads(sys.argv[2])
deploy = json.load(open(f"{out}/deploy.json"))
session = ort.InferenceSession(f"{out}/model.onnx", providers=["CPUExecutionProvider"])
tokenizer = AutoTokenizer.from_pretrained(out)
enc = tokenizer(texts, padding=True, truncation=True, max_length=deploy["max_length"], return_tensors="np")
feed = {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}
logits = session.run(["logits"], feed)[0]
assert "blora_export" not in sys.modules
print(json.dumps({"logits": logits.tolist(), "labels": [deploy["labels"][i] for i in logits.argmax(-1)]}))
"""


@pytest.mark.parametrize("model_type", ["bert", "deberta-v2"])
def test_predictor_matches_the_pytorch_checkpoint(model_type):
    out, _ = compressed(model_type, "blora", "speed")
    predictor = runtime.load(out)
    texts = [ex["text"] for ex in read_validation(checkpoint(model_type))]
    predictions = predictor.predict(texts)
    model, meta = load_checkpoint(checkpoint(model_type))
    batches = [tokenize(predictor.tokenizer, texts, predictor.input_names)]
    # the rule compress verifies with: the integer-exact reference, within 4x its own float32 noise
    with integer_exact(model, plan_of(model, meta)) as reference_model:
        reference = torch_logits(reference_model, batches)
        noise = noise_floor(reference_model, batches, reference, meta.problem_type)
    got = np.array([p["logits"] for p in predictions])
    assert compare(reference, got, meta.problem_type, noise=noise).within_tolerance
    assert [p["label"] for p in predictions] == [meta.labels[i] for i in got.argmax(-1)]
    assert {p["label"] for p in predictions} == {"negative", "positive"}
    assert all(0.5 <= p["score"] <= 1.0 for p in predictions)
    assert predictor.input_names == json.loads((out / "deploy.json").read_text())["input_names"]
    pairs = predictor.predict(texts[:4], text_pairs=texts[4:8])
    assert len(pairs) == 4


def test_plain_onnxruntime_and_autotokenizer_without_project_code():
    out, _ = compressed("bert", "blora", "size")
    texts = [ex["text"] for ex in read_validation(checkpoint("bert"))][:16]
    done = subprocess.run([sys.executable, "-c", PLAIN_DEPLOYMENT, str(out), json.dumps(texts)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    predictor = runtime.load(out)
    assert np.allclose(plain["logits"], predictor.logits(texts), rtol=0, atol=1e-6)
    assert plain["labels"] == [p["label"] for p in predictor.predict(texts)]


def test_runtime_rejects_an_incomplete_directory(tmp_path):
    with pytest.raises(runtime.DeploymentError, match="deploy.json"):
        runtime.load(tmp_path)
    with pytest.raises(TypeError):
        runtime.load(compressed("bert", "blora", "speed")[0]).predict("a single string")
