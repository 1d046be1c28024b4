"""moxin-plugin-vlm's registrations (the ``vlm`` entry point of the ``moxin`` group)."""

from __future__ import annotations

from moxin_core.api import hookimpl


@hookimpl
def moxin_model_families():
    from moxin_plugin_vlm.family import VLMFamily

    return {"vlm": VLMFamily}


@hookimpl
def moxin_models():
    from moxin_plugin_vlm.recipes import PRESETS

    return dict(PRESETS)


@hookimpl
def moxin_vision_encoders():
    from moxin_plugin_vlm.encoders import ENCODERS

    return dict(ENCODERS)


@hookimpl
def moxin_objectives():
    from moxin_plugin_vlm.objective import VisionLanguageSFT

    return {"vlm": VisionLanguageSFT}


@hookimpl
def moxin_data_sources():
    from moxin_plugin_vlm.data import EmbeddedShapes, LLaVAFile

    return {"embedded_shapes": EmbeddedShapes, "llava": LLaVAFile}


@hookimpl
def moxin_evaluators():
    from moxin_plugin_vlm.evaluate import HeldoutShapes

    return {"heldout-shapes": HeldoutShapes}


@hookimpl
def moxin_variants():
    from moxin_plugin_vlm.recipes import VARIANTS

    return dict(VARIANTS)


@hookimpl
def moxin_runtimes():
    from moxin_plugin_vlm.runtime import VLMRuntime

    return {"vlm": VLMRuntime}
