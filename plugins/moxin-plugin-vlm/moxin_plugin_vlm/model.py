"""The vision-language model: a vision encoder, a projector and a causal language model.

Projected patch embeddings go right after BOS (prismatic): a row ``[BOS, t1, t2, ...]`` with an
image becomes ``[BOS, p1 ... pP, t1, t2, ...]``; the patch positions carry no loss. In a batch
mixing image and text-only rows, a text-only row gets the ``P`` slots at its end, masked out
(attention mask 0, labels ignored), so every row has the same length and the text rows compute
exactly what the language model alone would.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from moxin_core.api import IGNORE_INDEX, MoxinError

from moxin_plugin_vlm.encoders import ENCODERS
from moxin_plugin_vlm.projectors import build_projector


def build_encoder(spec: dict[str, Any]) -> nn.Module:
    """The vision encoder of ``{"name": NAME, "options": {...}}``: this plugin's encoders, else
    one registered by another plugin (``moxin_vision_encoders``)."""
    name, options = spec["name"], dict(spec.get("options") or {})
    if name in ENCODERS:
        return ENCODERS[name](**options)
    from moxin_core.api import Registry

    return Registry().get("vision_encoders", name)(**options)


class VisionLanguageModel(nn.Module):
    """``forward(input_ids, attention_mask, labels, pixel_values, has_image)`` -> the language
    model's output (loss when ``labels`` are given), over the sequence with patches inserted."""

    def __init__(self, config: dict[str, Any], language_model: nn.Module,
                 vision: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.vision = vision if vision is not None else build_encoder(config["encoder"])
        self.projector = build_projector(config["projector"], int(self.vision.feature_width),
                                         int(language_model.config.hidden_size))
        self.language_model = language_model

    @property
    def num_patches(self) -> int:
        return int(self.vision.num_patches)

    def image_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(images, patches, hidden)`` projected patch features."""
        return self.projector(self.vision(pixel_values))

    def merge(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
              labels: torch.Tensor | None, pixel_values: torch.Tensor | None,
              has_image: torch.Tensor | None):
        """Input embeddings, attention mask and labels with the patches inserted after BOS."""
        embeds = self.language_model.get_input_embeddings()(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if pixel_values is None:
            return embeds, attention_mask, labels
        rows, patches = input_ids.shape[0], self.num_patches
        if has_image is None:
            has_image = torch.ones(rows, dtype=torch.bool, device=input_ids.device)
        has_image = has_image.bool()
        if int(has_image.sum()) != pixel_values.shape[0]:
            raise MoxinError(f"{pixel_values.shape[0]} images for {int(has_image.sum())} rows "
                             "marked as having one.")
        images = self.image_embeddings(pixel_values).to(embeds.dtype)
        slots = torch.zeros(rows, patches, embeds.shape[-1], dtype=embeds.dtype,
                            device=embeds.device)
        slots[has_image] = images
        image_rows = has_image.view(rows, 1, 1)
        # image rows: [BOS, patches, rest]; text rows: [BOS, rest, masked slots]
        merged = torch.where(image_rows,
                             torch.cat([embeds[:, :1], slots, embeds[:, 1:]], dim=1),
                             torch.cat([embeds, slots], dim=1))
        flags = has_image.view(rows, 1)
        on = torch.ones(rows, patches, dtype=attention_mask.dtype, device=attention_mask.device)
        mask = torch.where(flags, torch.cat([attention_mask[:, :1], on, attention_mask[:, 1:]], 1),
                           torch.cat([attention_mask, torch.zeros_like(on)], 1))
        if labels is not None:
            ignore = torch.full((rows, patches), IGNORE_INDEX, dtype=labels.dtype,
                                device=labels.device)
            labels = torch.where(flags, torch.cat([labels[:, :1], ignore, labels[:, 1:]], 1),
                                 torch.cat([labels, ignore], 1))
        return merged, mask, labels

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                has_image: torch.Tensor | None = None, **kwargs: Any) -> Any:
        embeds, mask, labels = self.merge(input_ids, attention_mask, labels, pixel_values,
                                          has_image)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return self.language_model(inputs_embeds=embeds, attention_mask=mask, labels=labels,
                                   position_ids=positions, use_cache=False, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """New tokens after the prompt (one image per row, or none), through the language
        model's ``generate`` on the merged embeddings."""
        has_image = None
        if pixel_values is not None:
            has_image = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        embeds, mask, _ = self.merge(input_ids, attention_mask, None, pixel_values, has_image)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
