"""The example's package importable from its source folder (the install test pip-installs it).

Only the package is exposed (not the example's folder on sys.path, where its ``tests`` folder
would shadow the repository's ``tests`` package)."""

import importlib.util
import sys
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1] / "moxin_plugin_orpo"
if "moxin_plugin_orpo" not in sys.modules:
    _spec = importlib.util.spec_from_file_location(
        "moxin_plugin_orpo", _PACKAGE / "__init__.py",
        submodule_search_locations=[str(_PACKAGE)])
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["moxin_plugin_orpo"] = _module
    _spec.loader.exec_module(_module)
