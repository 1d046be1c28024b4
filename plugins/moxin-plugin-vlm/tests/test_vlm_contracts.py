"""The plugin's vision encoders, its ``vlm`` model family and its ``heldout-shapes`` evaluator
against moxin_core.testing's contract checks (tiny sizes: the real towers are checked for their
shapes in test_encoders.py)."""

from __future__ import annotations

import pytest
import torch

from moxin_core.testing import (ContractError, check_evaluator, check_model_family,
                                check_vision_encoder)
from moxin_plugin_vlm.encoders import FusedViT, tiny_vit
from moxin_plugin_vlm.family import VLMFamily

from vlm_models import tiny_vlm


@pytest.mark.parametrize("name,options", [("tiny-vit", {}),
                                          ("tiny-vit", {"image_resize": "letterbox"}),
                                          ("tiny-vit", {"image_resize": "resize-crop"}),
                                          ("timm-vit", {"model_name": "vit_tiny_patch16_224",
                                                        "image_size": 32, "patch_size": 8,
                                                        "embed_dim": 32, "depth": 3,
                                                        "num_heads": 2})])
def test_the_registered_encoders_keep_the_encoder_contracts(name, options, moxin_registry):
    encoder = check_vision_encoder(moxin_registry.get("vision_encoders", name), **options)
    assert encoder.num_patches == 16


def test_a_fused_pair_of_towers_keeps_the_encoder_contracts():
    # dinosiglip's structure (two towers, each normalising the pixels its own way) at tiny size
    encoder = check_vision_encoder(lambda: FusedViT(tiny_vit(), tiny_vit(embed_dim=32)))
    assert encoder.feature_width == 64 + 32


def _tiny_config(lm_folder) -> dict:
    family = VLMFamily()
    config = {"encoder": {"name": "tiny-vit", "options": {}}, "projector": "gelu-mlp",
              "llm": str(lm_folder), "pad_token": "<PAD>", "pad_to_multiple_of": 64}
    return family.bind_references(config, {"llm": str(lm_folder)})


def _inputs(processor) -> dict[str, torch.Tensor]:
    """Two rows with a picture each: the outputs compared depend on every part of the model."""
    from moxin_core.testing.vision_encoders import sample_pictures

    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(0))
    ids[:, 0] = processor.tokenizer.bos_token_id
    pixels = torch.stack([processor.image(p) for p in sample_pictures()[:2]])
    return {"input_ids": ids, "pixel_values": pixels, "has_image": torch.ones(2, dtype=torch.bool)}


def test_the_vlm_family_keeps_the_family_contracts(lm_folder, tmp_path, moxin_registry):
    _, processor, family = tiny_vlm(lm_folder)
    out = check_model_family(family, _tiny_config(lm_folder), processor, tmp_path,
                             inputs=_inputs(processor))
    assert sorted(p.name for p in out.iterdir()) == [
        "image.json", "lm", "moxin.json", "projector.safetensors", "vision.safetensors",
        "vlm.json"]
    scores = check_evaluator(moxin_registry.get("evaluators", "heldout-shapes"), out,
                             {"num": 4})
    assert scores["n"] == 4.0 and 0.0 <= scores["accuracy"] <= 1.0


class _ReloadsARandomProjector(VLMFamily):
    """Planted bug: load builds the projector afresh instead of reading projector.safetensors."""

    def load(self, source):
        model = super().load(source)
        for module in model.projector.modules():
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()
        return model


def test_a_vlm_family_that_loses_the_projector_is_caught(lm_folder, tmp_path):
    _, processor, _ = tiny_vlm(lm_folder)
    with pytest.raises(ContractError, match=r"_ReloadsARandomProjector breaks the contract "
                                            r"'save/load keeps the weights': projector\.0\.weight "
                                            "differs"):
        check_model_family(_ReloadsARandomProjector(), _tiny_config(lm_folder), processor,
                           tmp_path, inputs=_inputs(processor))
