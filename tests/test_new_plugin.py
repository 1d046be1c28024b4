"""`moxin new-plugin NAME --kind KIND`: every kind scaffolds a package that pip installs, that
`moxin plugins` lists, and whose generated tests (moxin_core.testing's fixtures and contract
checks) pass at once."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from moxin_core.commands.new_plugin import KINDS
from tests.conftest import assert_clean_error, install_distributions, run_cli, subprocess_env


@pytest.mark.slow
def test_every_kind_installs_and_passes_its_own_tests(tmp_path):
    roots = []
    for kind in KINDS:
        result = run_cli("new-plugin", f"demo-{kind}", "--kind", kind, "--out", str(tmp_path))
        assert result.returncode == 0, result.stderr
        root = tmp_path / f"moxin-plugin-demo-{kind}"
        assert f"Created {root}" in result.stdout
        for name in ("pyproject.toml", "README.md", f"moxin_plugin_demo_{kind}/plugin.py",
                     f"moxin_plugin_demo_{kind}/component.py",
                     f"tests/test_demo_{kind}.py"):
            assert (root / name).is_file(), (kind, name)
        roots.append(root)
    target = install_distributions(roots, tmp_path / "site")
    env = subprocess_env({"PYTHONPATH": str(target)})

    listed = subprocess.run([sys.executable, "-m", "moxin_core.cli", "plugins", "--json"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert listed.returncode == 0, listed.stderr
    plugins = {p["distribution"]: p for p in json.loads(listed.stdout)}
    for kind in KINDS:
        info = plugins[f"moxin-plugin-demo-{kind}"]
        assert info["error"] is None, info

    tests = [str(root / "tests") for root in roots]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "-rA", *tests], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    for kind in KINDS:  # every generated test file ran and passed
        assert re.search(rf"^PASSED \S*test_demo_{kind}\.py::", result.stdout, re.M), kind
    assert "failed" not in result.stdout.splitlines()[-1]


def test_bad_names_and_kinds_are_clear_errors(tmp_path):
    assert_clean_error(run_cli("new-plugin", "My_Plugin", "--kind", "objective", "--out",
                               str(tmp_path)), "'My_Plugin'", "lower-case")
    result = run_cli("new-plugin", "x", "--kind", "sampler", "--out", str(tmp_path))
    assert_clean_error(result, "--kind", "invalid choice", "objective")
    (tmp_path / "moxin-plugin-taken").mkdir()
    assert_clean_error(run_cli("new-plugin", "taken", "--kind", "data", "--out", str(tmp_path)),
                       "moxin-plugin-taken", "exists already")
