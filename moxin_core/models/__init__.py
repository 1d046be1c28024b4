"""Model families and presets (see :mod:`moxin_core.models.family`)."""

from moxin_core.models.family import (DEFAULT_FAMILY, FAMILY_FILE, ModelFamily, ModelPreset,
                                      ModelRef, family_for_source, get_family, resolve_model)

__all__ = ["DEFAULT_FAMILY", "FAMILY_FILE", "ModelFamily", "ModelPreset", "ModelRef",
           "family_for_source", "get_family", "resolve_model"]
