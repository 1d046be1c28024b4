"""The public API of moxin: what plugins and ``Trainer.fit`` scripts import, and nothing else.

Plugins import from this module only (the bundled plugins are held to it by an import-linter
contract); everything else in ``moxin_core`` may change between releases. Names are imported on
first use, so ``from moxin_core.api import hookimpl`` in a plugin's entry module stays cheap.

* hooks: ``hookimpl``, ``hookspec``, ``Registry``, ``get_plugin_manager``
* errors: ``MoxinError``, ``PluginLoadError``
* objectives: ``Objective``, ``ObjectiveContext``, ``CausalLM``, ``chunked_causal_lm_loss``,
  ``check_logits_chunk``, ``IGNORE_INDEX``,
  ``sequence_logps``, ``selective_log_softmax``, ``document_position_ids``,
  ``ObjectiveFootprint`` (what an objective's ``memory_footprint()`` tells ``moxin plan``)
* data: ``DataSource``, ``ORIGIN``, ``select_text``, ``ExampleBuilder``, ``DocumentPacker``,
  ``pack_documents``, ``MoxinDataModule``; the embedded corpus: ``iter_corpus``,
  ``arithmetic_problem``, ``NAMES``, ``ITEMS``, ``DAYS``
* models: ``ModelFamily``, ``ModelPreset``, ``CausalLMFamily``, ``DEFAULT_FAMILY``,
  ``resolve_model`` (a preset name, folder or hub id to its family and config), ``load_model``, ``save_model``, ``resolve_model_folder``, ``MoxinModule``, ``ModelRecipe``
* tokenizers and chat: ``load_tokenizer``, ``reply_stop_ids``, ``END_OF_TURN``, ``Runtime``,
  ``Message``, ``check_messages``, ``generation_options``
* recipes: ``Variant``, ``Stage``, ``DataSpec``, ``HyperParameters``, ``PREVIOUS``
* building blocks: ``build_objective``, ``build_datamodule``, ``build_module``,
  ``ensure_embedded_tokenizer``, ``train_variant``, ``run_evaluators``
* command line: ``Command``
* runs: ``kept_random_state`` (work that leaves a run's random numbers untouched)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "hookimpl": "moxin_core.hookspecs",
    "hookspec": "moxin_core.hookspecs",
    "Registry": "moxin_core.plugins",
    "get_plugin_manager": "moxin_core.plugins",
    "MoxinError": "moxin_core.errors",
    "PluginLoadError": "moxin_core.errors",
    "Objective": "moxin_core.objectives.base",
    "ObjectiveContext": "moxin_core.objectives.context",
    "CausalLM": "moxin_core.objectives.lm",
    "chunked_causal_lm_loss": "moxin_core.objectives.lm",
    "check_logits_chunk": "moxin_core.objectives.lm",
    "IGNORE_INDEX": "moxin_core.objectives.lm",
    "sequence_logps": "moxin_core.objectives.logprobs",
    "selective_log_softmax": "moxin_core.objectives.logprobs",
    "document_position_ids": "moxin_core.data.packing",
    "ObjectiveFootprint": "moxin_core.planning.footprints",
    "DocumentPacker": "moxin_core.data.packing",
    "ExampleBuilder": "moxin_core.data.packing",
    "pack_documents": "moxin_core.data.packing",
    "DataSource": "moxin_core.data.sources",
    "ORIGIN": "moxin_core.data.sources",
    "select_text": "moxin_core.data.sources",
    "MoxinDataModule": "moxin_core.data.datamodule",
    "iter_corpus": "moxin_core.corpus",
    "arithmetic_problem": "moxin_core.corpus",
    "NAMES": "moxin_core.corpus",
    "ITEMS": "moxin_core.corpus",
    "DAYS": "moxin_core.corpus",
    "ModelFamily": "moxin_core.models.family",
    "ModelPreset": "moxin_core.models.family",
    "DEFAULT_FAMILY": "moxin_core.models.family",
    "resolve_model": "moxin_core.models.family",
    "CausalLMFamily": "moxin_core.models.causal_lm",
    "load_model": "moxin_core.models.loading",
    "save_model": "moxin_core.export",
    "resolve_model_folder": "moxin_core.models.loading",
    "MoxinModule": "moxin_core.module",
    "kept_random_state": "moxin_core.callbacks",
    "fault_point": "moxin_core.faults",
    "write_openness_report": "moxin_core.mof",
    "stage_of": "moxin_core.mof",
    "ModelRecipe": "moxin_core.module",
    "load_tokenizer": "moxin_core.tokenizer",
    "reply_stop_ids": "moxin_core.tokenizer",
    "END_OF_TURN": "moxin_core.tokenizer",
    "Runtime": "moxin_core.runtime",
    "Message": "moxin_core.runtime",
    "check_messages": "moxin_core.runtime",
    "generation_options": "moxin_core.runtime",
    "Variant": "moxin_core.variants",
    "Stage": "moxin_core.variants",
    "DataSpec": "moxin_core.variants",
    "HyperParameters": "moxin_core.variants",
    "PREVIOUS": "moxin_core.variants",
    "build_objective": "moxin_core.training.blocks",
    "build_datamodule": "moxin_core.training.blocks",
    "build_module": "moxin_core.training.blocks",
    "ensure_embedded_tokenizer": "moxin_core.training.blocks",
    "train_variant": "moxin_core.training.stage",
    "run_evaluators": "moxin_core.training.stage",
    "Command": "moxin_core.commands.base",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"moxin_core.api has no {name!r}; the public API is: "
                             f"{', '.join(__all__)}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # import once
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load on first use
    pass
