"""Projectors from patch features (width ``v``) to the language model's embeddings (width ``d``).

prismatic's three: ``linear`` (Linear v->d), ``gelu-mlp`` (Linear v->d, GELU, Linear d->d) and
``fused-gelu-mlp`` for fused backbones (Linear v->4v, GELU, Linear 4v->d, GELU, Linear d->d).
"""

from __future__ import annotations

from torch import nn

from moxin_core.api import MoxinError


def linear(vision: int, text: int) -> nn.Module:
    return nn.Sequential(nn.Linear(vision, text, bias=True))


def gelu_mlp(vision: int, text: int) -> nn.Module:
    return nn.Sequential(nn.Linear(vision, text, bias=True), nn.GELU(),
                         nn.Linear(text, text, bias=True))


def fused_gelu_mlp(vision: int, text: int) -> nn.Module:
    hidden = 4 * vision
    return nn.Sequential(nn.Linear(vision, hidden, bias=True), nn.GELU(),
                         nn.Linear(hidden, text, bias=True), nn.GELU(),
                         nn.Linear(text, text, bias=True))


PROJECTORS = {"linear": linear, "gelu-mlp": gelu_mlp, "fused-gelu-mlp": fused_gelu_mlp}


def build_projector(name: str, vision: int, text: int) -> nn.Module:
    if name not in PROJECTORS:
        raise MoxinError(f"Unknown projector {name!r}; known: {', '.join(PROJECTORS)}.")
    return PROJECTORS[name](vision, text)
