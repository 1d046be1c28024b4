"""The LoRA contract of a finished stage folder trained with ``lora.r`` > 0."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from moxin_core.checkpointing import WEIGHTS, latest_checkpoint
from moxin_core.testing.contracts import ContractError


def check_lora_stage(stage_dir: str | Path, start: str | Path, atol: float = 1e-4,
                     registry: Any = None) -> dict[str, Any]:
    """Check what a LoRA stage promises, against ``start``, the model folder it started from:

    * ``adapter/`` is a peft adapter that loads onto the starting model;
    * the adapters trained (some ``lora_B`` is not zero);
    * the base stayed frozen: every weight of ``hf/`` outside the adapted layers equals the
      starting model's, and the adapted layers hold base + adapter;
    * ``hf/`` (adapters merged) gives the logits of the starting model with the adapters on,
      within ``atol``;
    * the checkpoints hold the adapters only (the frozen base is rebuilt, not saved).

    Returns facts for further asserts: ``trainable``, ``adapted`` (changed weights) and the
    largest logit difference ``max_diff``.
    """
    from peft import PeftModel
    from safetensors.torch import load_file

    from moxin_core.lora import quiet_peft
    from moxin_core.models.loading import load_model

    stage_dir = Path(stage_dir)
    where = f"LoRA stage {stage_dir}"
    adapter = stage_dir / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise ContractError(where, "lora-adapter", f"{adapter} holds no adapter_config.json.")
    base, _, _ = load_model(start, registry)
    merged, _, _ = load_model(stage_dir / "hf", registry)
    with quiet_peft():
        unmerged = PeftModel.from_pretrained(load_model(start, registry)[0], adapter).eval()

    lora_b = [p for n, p in unmerged.named_parameters() if "lora_B" in n]
    if not lora_b or all(float(p.abs().max()) == 0.0 for p in lora_b):
        raise ContractError(where, "lora-trained", "every lora_B weight is still zero: the "
                            "adapters did not train.")
    start_state, merged_state = base.state_dict(), merged.state_dict()
    adapted = {n.split(".base_layer")[0] + ".weight" for n, _ in unmerged.base_model.model
               .named_parameters() if ".base_layer.weight" in n}
    changed = [n for n in merged_state if not torch.equal(merged_state[n], start_state[n])]
    frozen_broken = sorted(set(changed) - adapted)
    if frozen_broken:
        raise ContractError(where, "lora-base-frozen", "weights outside the adapted layers "
                            f"changed: {', '.join(frozen_broken[:5])}.")
    vocab = int(base.config.vocab_size)
    ids = torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = unmerged(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    diff = float((want - got).abs().max())
    if diff > atol:
        raise ContractError(where, "lora-merged", "hf/ (adapters merged) differs from the "
                            f"starting model with the adapters by {diff:.2e} in logits "
                            f"(> {atol}).")
    checkpoint = latest_checkpoint(stage_dir / "checkpoints")
    if checkpoint is not None:
        extra = [k for k in load_file(checkpoint / WEIGHTS) if "lora_" not in k]
        if extra:
            raise ContractError(where, "lora-checkpoint", f"{checkpoint} holds frozen weights too "
                                f"({', '.join(extra[:3])}); only adapters belong there.")
    config = json.loads((adapter / "adapter_config.json").read_text())
    return {"trainable": sum(p.numel() for p in lora_b), "adapted": sorted(set(changed)),
            "max_diff": diff, "adapter_config": config}
