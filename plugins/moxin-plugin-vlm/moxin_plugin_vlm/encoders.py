"""Vision encoders built with timm: one ViT, or DINOv2 and SigLIP fused per patch (prismatic).

An encoder maps an image batch ``(batch, 3, H, W)`` to patch features ``(batch, patches,
feature_width)``: the patch tokens (no class or register tokens) of the **penultimate** block,
without the final norm, as prismatic's featurizers take them. ``dinosiglip`` runs DINOv2 ViT-L/14
with registers and SigLIP so400m/14 on the same image, each with its own normalisation, and
concatenates their features per patch (1024 + 1152 = 2176 at 256 patches for 224 px).

Models are created with ``pretrained=False`` (no network at run time): weights come from a local
file (``weights: path.safetensors``, or one per tower for ``dinosiglip``) or, when the hub is
reachable, ``pretrained: true``. ``tiny-vit`` is a 2-block ViT for tests and the demo.

``transform`` turns a PIL image into the normalised tensor the encoder takes; the image is first
brought to the encoder's size by one of three strategies (``image_resize``):

* ``resize-naive``: stretch to ``size x size`` (Moxin-7B-VLM);
* ``letterbox``: pad to a square with the normalisation mean colour, then resize;
* ``resize-crop``: resize the short side to ``size`` and crop the centre.

Grayscale, palette and RGBA images are converted to RGB first (alpha dropped).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from moxin_core.api import MoxinError

RESIZE = ("resize-naive", "letterbox", "resize-crop")

#: timm names of the towers, per resolution
#: (DINOv2 takes any size: the same weights at 224 and 384 px, positions interpolated)
DINOV2 = {224: "vit_large_patch14_reg4_dinov2.lvd142m",
          384: "vit_large_patch14_reg4_dinov2.lvd142m"}
SIGLIP = {224: "vit_so400m_patch14_siglip_224", 384: "vit_so400m_patch14_siglip_384"}
CLIP = {224: "vit_large_patch14_clip_224.openai", 336: "vit_large_patch14_clip_336.openai"}
#: a small ViT for tests and the tiny VLM (timm's VisionTransformer with small widths)
TINY_VIT = {"model_name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8,
            "embed_dim": 64, "depth": 2, "num_heads": 2}


class ImageTransform:
    """PIL image -> normalised ``(3, size, size)`` float tensor (module docstring)."""

    def __init__(self, size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 resize: str = "resize-naive") -> None:
        if resize not in RESIZE:
            raise MoxinError(f"image_resize must be one of {', '.join(RESIZE)}, got {resize!r}.")
        self.size, self.resize = int(size), resize
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def to_dict(self) -> dict:
        return {"size": self.size, "mean": list(self.mean), "std": list(self.std),
                "resize": self.resize}

    def _fit(self, image):
        from PIL import Image

        size = self.size
        if self.resize == "letterbox":
            side = max(image.size)
            fill = tuple(int(round(255 * m)) for m in self.mean[:3])
            square = Image.new("RGB", (side, side), fill)
            square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
            image = square
        elif self.resize == "resize-crop":
            scale = size / min(image.size)
            w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
            image = image.resize((w, h), Image.BICUBIC)
            left, top = (w - size) // 2, (h - size) // 2
            return image.crop((left, top, left + size, top + size))
        return image.resize((size, size), Image.BICUBIC)

    def __call__(self, image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")  # L, P, RGBA, CMYK ... -> RGB (alpha dropped)
        image = self._fit(image)
        data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
        pixels = data.view(self.size, self.size, 3).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (pixels - mean) / std


def _create(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)
    except RuntimeError as error:  # unknown model names
        raise MoxinError(f"timm cannot create {name!r}: {error}") from None
    except Exception as error:  # pretrained=True without the hub: download errors
        if not pretrained:
            raise
        raise MoxinError(f"timm could not fetch the pretrained weights of {name!r} "
                         f"({type(error).__name__}: {error}); give a local file with "
                         "`weights:` instead of `pretrained: true`.") from None


def _load_weights(model: nn.Module, path: str | Path | None, what: str) -> None:
    if path is None:
        return
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise MoxinError(f"{what}: weights file {path} does not exist.")
    state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(
        path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head")]
    if missing:
        raise MoxinError(f"{what}: {path} lacks {len(missing)} weights of the model, e.g. "
                         f"{missing[:3]}; is it the right checkpoint?")


class TimmViT(nn.Module):
    """One timm ViT: penultimate-block patch tokens, no prefix (class/register) tokens."""

    def __init__(self, model_name: str, image_size: int | None = None, pretrained: bool = False,
                 weights: str | None = None, image_resize: str = "resize-naive",
                 **timm_kwargs) -> None:
        super().__init__()
        if image_size is not None:
            timm_kwargs.setdefault("img_size", image_size)
        self.vit = _create(model_name, pretrained, **timm_kwargs)
        if not hasattr(self.vit, "forward_intermediates") or not hasattr(self.vit, "blocks"):
            raise MoxinError(f"{model_name!r} is not a timm ViT with blocks; the VLM takes patch "
                             "features of a ViT (SigLIP, DINOv2, CLIP, ViT).")
        _load_weights(self.vit, weights, model_name)
        self.layer = len(self.vit.blocks) - 2
        self.feature_width = int(self.vit.embed_dim)
        size = self.vit.patch_embed.img_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.num_patches = int(self.vit.patch_embed.num_patches)
        cfg = getattr(self.vit, "pretrained_cfg", None) or {}
        self.transform = ImageTransform(self.image_size, cfg.get("mean", (0.5, 0.5, 0.5)),
                                        cfg.get("std", (0.5, 0.5, 0.5)), image_resize)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        (features,) = self.vit.forward_intermediates(
            pixels, indices=[self.layer], output_fmt="NLC", intermediates_only=True,
            stop_early=True)
        return features


class FusedViT(nn.Module):
    """Two ViTs on the same image, features concatenated per patch (``dinosiglip``).

    The towers normalise differently: the transform gives pixels in [0, 1] and each tower
    normalises them with its own mean and std in ``forward``.
    """

    def __init__(self, first: TimmViT, second: TimmViT,
                 image_resize: str = "resize-naive") -> None:
        super().__init__()
        if first.num_patches != second.num_patches or first.image_size != second.image_size:
            raise MoxinError("Fused towers must see the same image size and patch grid, got "
                             f"{first.image_size}px/{first.num_patches} and "
                             f"{second.image_size}px/{second.num_patches} patches.")
        self.first, self.second = first, second
        self.feature_width = first.feature_width + second.feature_width
        self.image_size, self.num_patches = first.image_size, first.num_patches
        self.transform = ImageTransform(self.image_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
                                        image_resize)
        for name, tower in (("first", first), ("second", second)):
            self.register_buffer(f"{name}_stats", self._stats(tower), persistent=False)

    @staticmethod
    def _stats(tower: TimmViT) -> torch.Tensor:
        return torch.tensor([tower.transform.mean, tower.transform.std]).view(2, 1, 3, 1, 1)

    def fill_stats(self) -> None:
        """Recompute the towers' mean and std buffers (after materialising from meta)."""
        with torch.no_grad():
            for name, tower in (("first", self.first), ("second", self.second)):
                getattr(self, f"{name}_stats").copy_(self._stats(tower))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        first = (pixels - self.first_stats[0]) / self.first_stats[1]
        second = (pixels - self.second_stats[0]) / self.second_stats[1]
        return torch.cat([self.first(first), self.second(second)], dim=-1)


def dinosiglip(image_size: int = 224, pretrained: bool = False,
               weights: dict[str, str] | None = None,
               image_resize: str = "resize-naive") -> FusedViT:
    """prismatic's ``dinosiglip-vit-so-{224,384}px``: DINOv2 ViT-L/14 (registers) + SigLIP
    so400m/14."""
    if image_size not in SIGLIP:
        raise MoxinError(f"dinosiglip comes at {sorted(SIGLIP)} px, got {image_size}.")
    weights = weights or {}
    dino = TimmViT(DINOV2[image_size], image_size=image_size, pretrained=pretrained,
                   weights=weights.get("dinov2"), image_resize=image_resize)
    siglip = TimmViT(SIGLIP[image_size], pretrained=pretrained, weights=weights.get("siglip"),
                     image_resize=image_resize)
    return FusedViT(dino, siglip, image_resize)


def single(family: dict[int, str]):
    def factory(image_size: int = min(family), pretrained: bool = False,
                weights: str | None = None, image_resize: str = "resize-naive") -> TimmViT:
        if image_size not in family:
            raise MoxinError(f"This encoder comes at {sorted(family)} px, got {image_size}.")
        kwargs = {"image_size": image_size} if "dinov2" in family[image_size] else {}
        return TimmViT(family[image_size], pretrained=pretrained, weights=weights,
                       image_resize=image_resize, **kwargs)
    return factory


def timm_vit(model_name: str, image_size: int | None = None, pretrained: bool = False,
             weights: str | None = None, image_resize: str = "resize-naive",
             **timm_kwargs) -> TimmViT:
    """Any timm ViT by name (``vit_base_patch16_224``, ``vit_small_patch14_dinov2``, ...)."""
    return TimmViT(model_name, image_size, pretrained, weights, image_resize, **timm_kwargs)


def tiny_vit(image_resize: str = "resize-naive", **overrides) -> TimmViT:
    """A 2-block, 64-wide ViT on 32 px images (16 patches of 8 px): tests and the tiny VLM."""
    options = {**TINY_VIT, **overrides}
    return TimmViT(options.pop("model_name"), image_resize=image_resize, **options)


ENCODERS = {
    "dinosiglip": dinosiglip,
    "siglip": single(SIGLIP),
    "dinov2": single(DINOV2),
    "clip": single(CLIP),
    "timm-vit": timm_vit,
    "tiny-vit": tiny_vit,
}
