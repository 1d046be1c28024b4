"""Testing helpers for moxin plugins: contract tests and pytest fixtures.

Installed with moxin-core as the pytest plugin ``moxin`` (entry point group ``pytest11``), so a
plugin's own tests get the fixtures without a conftest:

* ``moxin_registry``: a fresh :class:`~moxin_core.plugins.Registry` of the installed plugins;
* ``moxin_register``: ``moxin_register(plugin_module_or_object)`` returns a registry with it
  registered as well, for one test (nothing is installed);
* ``moxin_tokenizer_dir`` / ``moxin_tokenizer``: a 512-token tokenizer trained once per session
  on the embedded corpus (chat template included);
* ``moxin_tiny_model``: a factory of identical tiny causal LMs (``moxin-nano``, seeded) sized to
  that tokenizer;
* ``moxin_model_folder``: that model and tokenizer saved once per session as a ``causal-lm``
  model folder (what exporters and evaluators are given);
* ``moxin_datamodule``: ``moxin_datamodule(objective, data=None, seq_len=64, ...)``, the data
  module ``moxin train`` builds for an objective over data sources (default the embedded
  corpus), already checked;
* ``moxin_records``: a factory of records from the embedded corpus or chat sources;
* ``moxin_subprocess_env``: this process's environment for a child ``moxin`` process (offline,
  without the distributed settings an in-process fit leaves behind).

And the contract checks, one per kind of component, which fail with :class:`ContractError`
naming the broken contract:

* :func:`check_data_source` and :func:`check_objective` (:mod:`moxin_core.testing.contracts`);
* :func:`check_exporter` (:mod:`moxin_core.testing.exporters`);
* :func:`check_vision_encoder` (:mod:`moxin_core.testing.vision_encoders`);
* :func:`check_reward` (:mod:`moxin_core.testing.rewards`);
* :func:`check_evaluator` (:mod:`moxin_core.testing.evaluators`);
* :func:`check_model_family` (:mod:`moxin_core.testing.model_families`);
* :func:`check_lora_stage`, for a stage trained with ``lora`` (:mod:`moxin_core.testing.lora`).

And :func:`subprocess_env` (what the ``moxin_subprocess_env`` fixture returns), for module-level
helpers that start a ``moxin`` child process.
"""

from moxin_core.testing.contracts import (ContractError, check_data_source, check_objective,
                                          objective_batch)
from moxin_core.testing.evaluators import check_evaluator
from moxin_core.testing.exporters import check_exporter
from moxin_core.testing.lora import check_lora_stage
from moxin_core.testing.model_families import check_model_family
from moxin_core.testing.plugin import DISTRIBUTED_ENV, subprocess_env
from moxin_core.testing.rewards import check_reward
from moxin_core.testing.vision_encoders import check_vision_encoder

__all__ = ["DISTRIBUTED_ENV", "ContractError", "check_data_source", "check_evaluator",
           "check_exporter", "check_lora_stage", "check_model_family", "check_objective",
           "check_reward",
           "check_vision_encoder", "objective_batch", "subprocess_env"]
