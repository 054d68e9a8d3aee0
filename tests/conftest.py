import pytest
import torch

from blora_export import fused
from blora_export.testing import make_tiny_model


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def tiny_deberta_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-deberta"), "deberta-v2")


@pytest.fixture(params=["bert", "deberta-v2"])
def tiny_model_dir(request, tiny_bert_dir, tiny_deberta_dir):
    return tiny_bert_dir if request.param == "bert" else tiny_deberta_dir


@pytest.fixture(scope="session", autouse=True)
def _eager_kernels():
    """Tiny models: compiling the fused kernels costs more than it saves (tests/test_fused.py compiles them)."""
    fused.set_enabled(False)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
