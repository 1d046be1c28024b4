"""Vision encoders (real timm architectures, no weights), projectors and image transforms."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from moxin_core.errors import MoxinError
from moxin_plugin_vlm.encoders import ImageTransform, dinosiglip, timm_vit, tiny_vit
from moxin_plugin_vlm.projectors import build_projector


def test_dinosiglip_224px_gives_256_patches_of_2176_features():
    with torch.device("meta"):  # the real ViT-L/14 and so400m/14 shapes, no memory
        encoder = dinosiglip(224)
        features = encoder(torch.zeros(2, 3, 224, 224))
    assert tuple(features.shape) == (2, 256, 2176)
    assert encoder.feature_width == 2176 and encoder.num_patches == 256
    assert (encoder.first.feature_width, encoder.second.feature_width) == (1024, 1152)
    # the penultimate block of each tower, no class or register tokens
    assert encoder.first.layer == len(encoder.first.vit.blocks) - 2 == 22
    assert encoder.second.layer == len(encoder.second.vit.blocks) - 2 == 25
    assert encoder.first.vit.num_prefix_tokens == 5 and encoder.second.vit.num_prefix_tokens == 0


def test_fused_gelu_mlp_has_the_stated_layer_shapes():
    with torch.device("meta"):
        projector = build_projector("fused-gelu-mlp", 2176, 4096)
    shapes = [tuple(m.weight.shape) for m in projector if isinstance(m, torch.nn.Linear)]
    assert shapes == [(8704, 2176), (4096, 8704), (4096, 4096)]
    assert [type(m).__name__ for m in projector] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    gelu = [tuple(m.weight.shape) for m in build_projector("gelu-mlp", 8, 16)
            if isinstance(m, torch.nn.Linear)]
    assert gelu == [(16, 8), (16, 16)]
    with pytest.raises(MoxinError, match="Unknown projector 'mlp'"):
        build_projector("mlp", 8, 16)


def test_patch_features_are_the_penultimate_block_output():
    torch.manual_seed(0)
    encoder = tiny_vit().eval()
    pixels = torch.randn(1, 3, 32, 32)
    seen = {}
    encoder.vit.blocks[-2].register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    features = encoder(pixels)
    torch.testing.assert_close(features, seen["out"][:, encoder.vit.num_prefix_tokens:])
    assert tuple(features.shape) == (1, 16, 64)


def test_transforms_resize_letterbox_crop_and_convert_modes():
    red = Image.new("RGB", (40, 20), (255, 0, 0))
    naive = ImageTransform(8, (0, 0, 0), (1, 1, 1), "resize-naive")(red)
    assert naive.shape == (3, 8, 8) and torch.allclose(naive[0], torch.ones(8, 8))
    # letterbox pads the short side with the mean colour: top and bottom rows are the padding
    mean = (0.5, 0.5, 0.5)
    boxed = ImageTransform(8, mean, (1, 1, 1), "letterbox")(red)
    assert torch.allclose(boxed[:, 0], torch.zeros(3, 8), atol=0.01)  # (128/255 - 0.5) ~ 0
    assert torch.allclose(boxed[0, 4], torch.full((8,), 0.5), atol=0.01)  # red row: 1 - 0.5
    # resize-crop keeps the centre: a picture whose centre is green reads green
    half = Image.new("RGB", (40, 20), (0, 0, 255))
    half.paste((0, 255, 0), (10, 0, 30, 20))
    crop = ImageTransform(8, (0, 0, 0), (1, 1, 1), "resize-crop")(half)
    assert crop[1].mean() > 0.9 and crop[2].mean() < 0.1
    for mode in ("L", "RGBA", "P", "CMYK"):
        assert ImageTransform(8, mean, (1, 1, 1))(Image.new(mode, (9, 9))).shape == (3, 8, 8)
    with pytest.raises(MoxinError, match="image_resize must be one of"):
        ImageTransform(8, mean, (1, 1, 1), "stretch")


def test_timm_names_and_errors():
    with torch.device("meta"):
        vit = timm_vit("vit_small_patch16_224")
    assert vit.feature_width == 384 and vit.num_patches == 196
    with pytest.raises(MoxinError, match="timm cannot create 'no_such_vit'"):
        timm_vit("no_such_vit")
    with pytest.raises(MoxinError, match="dinosiglip comes at"):
        dinosiglip(300)


def test_the_full_size_vlm_builds_on_the_meta_device_for_fsdp(tmp_path):
    """moxin-vlm as FSDP builds it: no weights read, no memory; decoder layers and both towers'
    blocks are the units sharded one by one."""
    from moxin_core.api import CausalLMFamily, Registry, resolve_model

    from moxin_plugin_vlm.family import VLMFamily

    registry = Registry()
    text = CausalLMFamily()
    config = dict(resolve_model(registry, "moxin-vlm").preset.config)
    weights = tmp_path / "absent.safetensors"  # a sharded build never opens it
    config["encoder"] = {**config["encoder"], "options": {**config["encoder"]["options"],
                                                          "weights": {"dinov2": str(weights)}}}
    config["lm"] = text.config_to_dict(resolve_model(registry, "moxin-7b").config())
    config["lm"]["vocab_size"] = 32064
    family = VLMFamily()
    with torch.device("meta"):
        model = family.build(config)
    assert all(p.is_meta for p in model.parameters())
    parts = {n: sum(p.numel() for p in getattr(model, n).parameters())
             for n in ("vision", "projector", "language_model")}
    assert parts["language_model"] == 8_114_180_096 + 64 * 4096 * 2
    assert 7.2e8 < parts["vision"] < 7.4e8  # ViT-L/14 (304M) + so400m/14 (428M), no heads
    kinds = {t.__name__ for t in family.block_types(model)}
    assert "MistralDecoderLayer" in kinds and "Block" in kinds
