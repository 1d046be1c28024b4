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
* ``moxin_records``: a factory of records from the embedded corpus or chat sources;
* ``moxin_subprocess_env``: this process's environment for a child ``moxin`` process (offline,
  without the distributed settings an in-process fit leaves behind).

And the contract checks (:mod:`moxin_core.testing.contracts`): :func:`check_data_source`,
:func:`check_objective`, which fail with :class:`ContractError` naming the broken contract.
"""

from moxin_core.testing.contracts import (ContractError, check_data_source, check_objective,
                                          objective_batch)

__all__ = ["ContractError", "check_data_source", "check_objective", "objective_batch"]
