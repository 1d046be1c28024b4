"""The contract check of vision encoders (``moxin_vision_encoders``): what a vision-language
model relies on when it turns pictures into patch features."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from moxin_core.testing.contracts import ContractError


def sample_pictures() -> list[Any]:
    """Noise pictures of different sizes and modes (RGB, grayscale, RGBA), the same every call:
    what a VLM data set holds."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)

    def noise(mode: str, width: int, height: int) -> Any:
        channels = len(mode)
        data = torch.randint(0, 256, (height, width, channels), generator=generator,
                             dtype=torch.uint8)
        return Image.frombytes(mode, (width, height), bytes(data.flatten().tolist()))

    return [noise("RGB", 47, 31), noise("RGB", 64, 64), noise("L", 20, 40), noise("RGBA", 33, 33)]


def check_vision_encoder(factory: Callable[..., torch.nn.Module],
                         **options: Any) -> torch.nn.Module:
    """The contracts of the vision encoder ``factory(**options)``:

    * **a torch module** with an int **feature_width** and a callable **transform**;
    * **transform gives (3, H, W)**: RGB pictures of any size, grayscale and RGBA ones all
      become float tensors of one shape ``(3, H, W)``;
    * **patch features**: the module maps the stacked ``(batch, 3, H, W)`` to
      ``(batch, patches, width)``, the same number of patches for every picture;
    * **feature_width**: ``width`` equals ``feature_width`` (a VLM sizes its projector by it);
    * **num_patches**: an int equal to ``patches`` (a VLM counts the image tokens it inserts by
      it);
    * **finite features**;
    * **deterministic in eval mode**: the same batch twice gives the same features;
    * **batch independence** (eval mode): a picture alone gives the features it gets in the
      batch, within float tolerance;
    * **features depend on the picture**: two different pictures give different features;
    * **differentiable** (when it has trainable parameters): in training mode, backward from
      the features gives finite gradients, not all zero, to its parameters.

    Returns the encoder, in eval mode.
    """
    encoder = factory(**options)
    name = type(encoder).__name__
    if not isinstance(encoder, torch.nn.Module):
        raise ContractError(name, "a torch module", f"factory(**{options}) returned {encoder!r}")
    width = getattr(encoder, "feature_width", None)
    if not isinstance(width, int) or isinstance(width, bool) or width <= 0:
        raise ContractError(name, "feature_width", f"feature_width is {width!r}, not a "
                            "positive int")
    transform = getattr(encoder, "transform", None)
    if not callable(transform):
        raise ContractError(name, "transform gives (3, H, W)", f"transform is {transform!r}, "
                            "not a callable taking a PIL image")
    pictures = sample_pictures()
    tensors = []
    for picture in pictures:
        described = f"a {picture.width}x{picture.height} {picture.mode} picture"
        try:
            tensor = transform(picture)
        except Exception as error:
            raise ContractError(name, "transform gives (3, H, W)", f"transform of {described} "
                                f"raised {type(error).__name__}: {error}") from error
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or \
                tensor.dim() != 3 or tensor.shape[0] != 3 or \
                (tensors and tensor.shape != tensors[0].shape):
            shown = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else tensor
            raise ContractError(name, "transform gives (3, H, W)", f"transform of {described} "
                                f"gave {shown!r}" + (f", the first gave "
                                                      f"{tuple(tensors[0].shape)}" if tensors
                                                      else ""))
        tensors.append(tensor)

    encoder.eval()
    batch = torch.stack(tensors)
    with torch.no_grad():
        features = encoder(batch)
        if not isinstance(features, torch.Tensor) or features.dim() != 3 or \
                features.shape[0] != len(tensors):
            shown = tuple(features.shape) if isinstance(features, torch.Tensor) else features
            raise ContractError(name, "patch features", f"images {tuple(batch.shape)} gave "
                                f"{shown!r}, expected (batch, patches, width)")
        if features.shape[-1] != width:
            raise ContractError(name, "feature_width", f"features are {features.shape[-1]} "
                                f"wide but feature_width is {width}")
        patches = getattr(encoder, "num_patches", None)
        if not isinstance(patches, int) or patches != features.shape[1]:
            raise ContractError(name, "num_patches", f"num_patches is {patches!r} but the "
                                f"features have {features.shape[1]} patches (an int attribute "
                                "num_patches is required)")
        if not torch.isfinite(features).all():
            raise ContractError(name, "finite features", "the features hold NaN or inf")
        scale = max(1.0, float(features.abs().max()))
        tolerance = 1e-5 * scale
        again = encoder(batch)
        if not torch.allclose(again, features, rtol=1e-6, atol=1e-7 * scale):
            raise ContractError(name, "deterministic in eval mode", f"the same batch gave other "
                                f"features (max difference {_difference(again, features)})")
        for index in range(2):
            alone = encoder(batch[index:index + 1])
            if alone.shape != features[index:index + 1].shape or not torch.allclose(
                    alone, features[index:index + 1], rtol=1e-4, atol=tolerance):
                raise ContractError(name, "batch independence", f"picture {index} alone gets "
                                    f"other features than in a batch of {len(tensors)} (max "
                                    f"difference {_difference(alone, features[index:index + 1])})"
                                    "; is something normalised over the batch?")
        if torch.allclose(features[0], features[1], rtol=1e-4, atol=tolerance):
            raise ContractError(name, "features depend on the picture", "two different pictures "
                                "gave the same features")

    trainable = [p for p in encoder.parameters() if p.requires_grad]
    if trainable:
        encoder.train()
        try:
            encoder(batch).float().pow(2).mean().backward()
        except RuntimeError as error:
            raise ContractError(name, "differentiable", f"backward from the features failed "
                                f"({str(error).splitlines()[0]})") from error
        finally:
            encoder.eval()
        grads = [p.grad for p in trainable if p.grad is not None]
        for p in trainable:
            p.grad = None
        if not grads or not any(bool(g.abs().sum() > 0) for g in grads):
            raise ContractError(name, "differentiable", "backward from the features gave no "
                                "gradient to any trainable parameter")
        if not all(torch.isfinite(g).all() for g in grads):
            raise ContractError(name, "differentiable", "backward from the features gave "
                                "non-finite gradients")
    return encoder


def _difference(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.shape != b.shape:
        return f"shapes {tuple(a.shape)} and {tuple(b.shape)}"
    return f"{float((a - b).abs().max()):.3g}"
