"""The pruned adapter in PEFT's LoRA format (`compress --peft-adapter`): OUT/peft_adapter/.

    from peft import PeftModel
    model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=N),
                                      "out/peft_adapter")

reproduces the checkpoint's model with deterministic gates and every quantizer bypassed (fp32 weights,
activations and embeddings): W0 + scaling * B[:, kept] diag(g * e)[kept] A[kept] per adapted Linear.

- Kept ranks come from the export plan (the only place gates are read); the gate values of kept ranks are
  exactly 1, and E is folded into B, so lora_B = B[:, kept] * E[kept] and lora_A = A[kept].
- PEFT scales by lora_alpha / r with r the module's (pruned) rank: rank_pattern gives each module its rank and
  alpha_pattern the alpha = scaling * rank that keeps training's scaling (lora_alpha / max_rank).
- The head (pooler, classifier: the checkpoint's head list) goes in modules_to_save, its weights saved the way
  PEFT saves them (base_model.model.<name>, without the modules_to_save prefix).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from ..inject import wrapped_linears
from ..lora import kept_components, lora_factors
from .plan import CompressionPlan

ADAPTER_DIR = "peft_adapter"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."


def adapter_tensors(model: nn.Module, plan: CompressionPlan, head: list[str]) -> dict[str, torch.Tensor]:
    """PEFT state dict: pruned lora_A / lora_B (E folded into B) per adapted module, and the head weights."""
    wrapped = wrapped_linears(model)
    out: dict[str, torch.Tensor] = {}
    for lp in plan.linears:
        if not lp.adapted or not lp.rank:
            continue
        layer = wrapped[lp.name]
        a, b, e = kept_components(layer.lora_A.detach(), layer.lora_B.detach(), layer.lora_E.detach(), lp.kept)
        b, a = lora_factors(a, b, e)
        out[f"{PREFIX}{lp.name}.lora_A.weight"] = a.float().contiguous()
        out[f"{PREFIX}{lp.name}.lora_B.weight"] = b.float().contiguous()
    for key, value in model.state_dict().items():
        if any(key.startswith(h + ".") for h in head):
            out[PREFIX + key] = value.detach().float().contiguous()
    return out


def adapter_config(plan: CompressionPlan, base_model: str, revision: str | None, head: list[str]) -> dict:
    adapted = [lp for lp in plan.linears if lp.adapted and lp.rank]
    ranks = {lp.name: lp.rank for lp in adapted}
    alphas = {lp.name: lp.scaling * lp.rank for lp in adapted}
    # The most common rank is the default r; every module is still listed in both patterns (explicit).
    r = Counter(ranks.values()).most_common(1)[0][0] if ranks else 8
    alpha = next((alphas[n] for n in ranks if ranks[n] == r), float(r))
    return {
        "peft_type": "LORA", "task_type": "SEQ_CLS", "base_model_name_or_path": base_model, "revision": revision,
        "r": r, "lora_alpha": alpha, "rank_pattern": ranks, "alpha_pattern": alphas,
        "target_modules": sorted(ranks), "modules_to_save": list(head), "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "inference_mode": True, "layers_to_transform": None, "layers_pattern": None,
    }


def write_peft_adapter(directory: str | Path, model: nn.Module, plan: CompressionPlan, base_model: str,
                       revision: str | None, head: list[str]) -> Path:
    """Write adapter_config.json and adapter_model.safetensors into `directory` (created)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = adapter_config(plan, base_model, revision, head)
    save_file(adapter_tensors(model, plan, head), str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return directory
