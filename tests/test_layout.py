"""Import contracts (import-linter): the core never imports a plugin, the bundled plugins use only
``moxin_core.api``, and the core's modules form layers without cycles."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

import moxin_core
from tests.conftest import REPO


def test_import_contracts_hold():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_every_core_module_has_a_layer():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    modules = {m.name for m in pkgutil.iter_modules(moxin_core.__path__)}
    assert modules == named, f"add {sorted(modules - named)} to a layer in pyproject.toml"
