"""moxin_core.testing's checks of vision encoders and model families: they pass on correct
components (the core's ``causal-lm`` family, a toy patch encoder) and catch planted bugs, each
named by the contract it breaks. The bundled VLM encoders and family are checked in
plugins/moxin-plugin-vlm/tests/test_vlm_contracts.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from moxin_core.models.causal_lm import CausalLMFamily
from moxin_core.models.presets import BUILTIN_PRESETS
from moxin_core.testing import ContractError, check_model_family, check_vision_encoder


# -- vision encoders -----------------------------------------------------------------------------

class _Patches(torch.nn.Module):
    """A correct toy encoder: 16 px pictures, 8 px patches linearly embedded (4 patches)."""

    size, patch = 16, 8

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Conv2d(3, width, kernel_size=self.patch, stride=self.patch)
        self.feature_width, self.num_patches = width, (self.size // self.patch) ** 2

    def transform(self, picture) -> torch.Tensor:
        picture = picture.convert("RGB").resize((self.size, self.size))
        return self._pixels(picture)

    def _pixels(self, picture) -> torch.Tensor:
        channels = len(picture.getbands())
        data = torch.frombuffer(bytearray(picture.tobytes()), dtype=torch.uint8)
        return data.view(self.size, self.size, channels).permute(2, 0, 1).float() / 127.5 - 1

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed(pixels).flatten(2).transpose(1, 2)


class _WidthLies(_Patches):
    """Planted bug: feature_width says 32, the features are 24 wide."""

    def __init__(self) -> None:
        super().__init__()
        self.feature_width = 32


class _PatchCountLies(_Patches):
    """Planted bug: num_patches says 16 (the patch grid of 4 px patches)."""

    def __init__(self) -> None:
        super().__init__()
        self.num_patches = 16


class _KeepsGrayscale(_Patches):
    """Planted bug: a grayscale picture stays one channel."""

    def transform(self, picture) -> torch.Tensor:
        return self._pixels(picture.resize((self.size, self.size)))


class _CentredOverBatch(_Patches):
    """Planted bug: features centred over the batch (a batch statistic)."""

    def forward(self, pixels):
        features = super().forward(pixels)
        return features - features.mean(dim=0, keepdim=True)


class _DropoutAlways(_Patches):
    """Planted bug: dropout on in eval mode too."""

    def forward(self, pixels):
        return torch.nn.functional.dropout(super().forward(pixels), 0.1, training=True)


class _LogFeatures(_Patches):
    """Planted bug: log of features that can be negative."""

    def forward(self, pixels):
        return super().forward(pixels).log()


class _IgnoresPicture(_Patches):
    """Planted bug: learned features that never look at the picture."""

    def __init__(self) -> None:
        super().__init__()
        self.learned = torch.nn.Parameter(torch.randn(self.num_patches, self.feature_width))

    def forward(self, pixels):
        return self.learned.expand(pixels.shape[0], -1, -1)


class _Detached(_Patches):
    """Planted bug: features computed under no_grad (gradients never reach the encoder)."""

    def forward(self, pixels):
        with torch.no_grad():
            return super().forward(pixels)


def test_a_correct_toy_encoder_passes():
    encoder = check_vision_encoder(_Patches, width=16)
    assert encoder.feature_width == 16 and not encoder.training


@pytest.mark.parametrize("encoder,contract", [
    (_WidthLies, "feature_width"), (_PatchCountLies, "num_patches"),
    (_KeepsGrayscale, "transform gives (3, H, W)"), (_CentredOverBatch, "batch independence"),
    (_DropoutAlways, "deterministic in eval mode"), (_LogFeatures, "finite features"),
    (_IgnoresPicture, "features depend on the picture"), (_Detached, "differentiable")])
def test_vision_encoder_contracts_catch_planted_bugs(encoder, contract):
    with pytest.raises(ContractError) as caught:
        check_vision_encoder(encoder)
    assert caught.value.contract == contract, str(caught.value)
    assert f"{encoder.__name__} breaks the contract {contract!r}" in str(caught.value)
    if contract == "transform gives (3, H, W)":
        assert "transform of a 20x40 L picture gave (1, 16, 16)" in str(caught.value)


# -- model families ------------------------------------------------------------------------------

def _nano_config():
    return BUILTIN_PRESETS["moxin-nano"]().config


def test_the_causal_lm_family_keeps_the_family_contracts(moxin_tokenizer, moxin_tokenizer_dir,
                                                         tmp_path):
    out = check_model_family(CausalLMFamily(), _nano_config(), moxin_tokenizer, tmp_path,
                             processor_source=moxin_tokenizer_dir)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.model").is_file()


class _DropsAWeight(CausalLMFamily):
    """Planted bug: save leaves one weight out (load draws it afresh)."""

    def save(self, model, processor, out, processor_source=None):
        out = super().save(model, processor, out, processor_source)
        weights = load_file(out / "model.safetensors")
        del weights["model.layers.0.mlp.up_proj.weight"]
        save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
        return out


class _NoFamilyFile(CausalLMFamily):
    """Planted bug: save writes no moxin.json."""

    def save(self, model, processor, out, processor_source=None):
        out = super().save(model, processor, out, processor_source)
        (Path(out) / "moxin.json").unlink()
        return out


class _CountsTheLayersOnly(CausalLMFamily):
    """Planted bug: describe counts the decoder layers and forgets the embeddings and head."""

    def describe(self, config):
        with torch.device("meta"):
            layers = self.build(config).model.layers
        return {**super().describe(config),
                "parameters": sum(p.numel() for p in layers.parameters())}


class _BuildsInHalf(CausalLMFamily):
    """Planted bug: build returns a float16 model."""

    def build(self, config):
        return super().build(config).half()


class _ForgetsPositions(CausalLMFamily):
    """Planted bug: config_from_dict drops max_position_embeddings (the default comes back)."""

    def config_from_dict(self, data):
        return super().config_from_dict({k: v for k, v in data.items()
                                         if k != "max_position_embeddings"})


class _InitialisesLinearsOnly(CausalLMFamily):
    """Planted bug: init_weights skips the norms and rotary frequencies."""

    def init_weights(self, model):
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                model._init_weights(module)


class _DropsChatTemplate(CausalLMFamily):
    """Planted bug: save_processor loses the chat template."""

    def save_processor(self, processor, out, source=None):
        super().save_processor(processor, out, source)
        (Path(out) / "chat_template.jinja").unlink(missing_ok=True)


class _LoadsForInference(CausalLMFamily):
    """Planted bug: load returns the model in eval mode (dropout off while training)."""

    def load(self, source):
        return super().load(source).eval()


@pytest.mark.parametrize("family,contract", [
    (_DropsAWeight, "save/load keeps the weights"), (_NoFamilyFile, "save records the family"),
    (_CountsTheLayersOnly, "describe matches the model"),
    (_BuildsInHalf, "builds in fp32"), (_ForgetsPositions, "config round-trips"),
    (_InitialisesLinearsOnly, "meta init"), (_DropsChatTemplate, "processor round-trips"),
    (_LoadsForInference, "load gives fp32 in training mode")])
def test_model_family_contracts_catch_planted_bugs(family, contract, moxin_tokenizer,
                                                   moxin_tokenizer_dir, tmp_path):
    with pytest.raises(ContractError) as caught:
        check_model_family(family(), _nano_config(), moxin_tokenizer, tmp_path,
                           processor_source=moxin_tokenizer_dir)
    assert caught.value.contract == contract, str(caught.value)
    assert f"{family.__name__} breaks the contract {contract!r}" in str(caught.value)
    if contract == "save/load keeps the weights":
        assert "model.layers.0.mlp.up_proj.weight differs" in str(caught.value)
    if contract == "processor round-trips":
        assert "chat_template" in str(caught.value)
