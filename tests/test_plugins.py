"""Plugin discovery through the `moxin` entry-point group, isolation of broken plugins, duplicates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from moxin_core import hookimpl
from moxin_core.errors import MoxinError, PluginLoadError
from moxin_core.plugins import CATEGORIES, MoxinPluginManager, Registry, get_plugin_manager
from tests.conftest import assert_clean_error, run_cli

GOOD_PLUGIN = '''
from moxin_core import hookimpl
from transformers import MistralConfig
from moxin_core.variants import DataSpec, Stage, Variant


class Encoder:
    feature_width = 8


@hookimpl
def moxin_data_sources():
    return {"good-source": dict}

@hookimpl
def moxin_objectives():
    return {"good-objective": dict}

@hookimpl
def moxin_vision_encoders():
    return {"good-vision": Encoder}

@hookimpl
def moxin_exporters():
    return {"good-export": dict}

@hookimpl
def moxin_evaluators():
    return {"good-eval": dict}

@hookimpl
def moxin_reward_functions():
    return {"good-reward": dict}

@hookimpl
def moxin_runtimes():
    return {"good-runtime": dict}

@hookimpl
def moxin_models():
    return {"good-model": lambda: MistralConfig(hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=1, num_attention_heads=4,
                                                 num_key_value_heads=1, vocab_size=300)}

@hookimpl
def moxin_variants():
    return {"good-variant": lambda: Variant("good-variant", [
        Stage("only", "lm", [DataSpec("dup-source")], model="good-model", tokenizer="embedded")])}
'''

DUP_PLUGIN = '''
from moxin_core import hookimpl

@hookimpl
def moxin_data_sources():
    return {"dup-source": dict}
'''

BROKEN_PLUGIN = '''
raise ImportError("this plugin needs a package that is not installed")
'''


def _distribution(root: Path, dist: str, package: str, code: str) -> Path:
    folder = root / dist
    (folder / package).mkdir(parents=True)
    (folder / package / "__init__.py").write_text("")
    (folder / package / "plugin.py").write_text(textwrap.dedent(code))
    (folder / "pyproject.toml").write_text(textwrap.dedent(f'''
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "1.2.3"

        [project.entry-points.moxin]
        {package} = "{package}.plugin"

        [tool.setuptools]
        packages = ["{package}"]
    '''))
    return folder


@pytest.fixture(scope="module")
def installed_plugins(tmp_path_factory) -> Path:
    """Four plugin distributions pip-installed into a target folder (not the shared venv)."""
    root = tmp_path_factory.mktemp("dists")
    dists = [
        _distribution(root, "moxin-plugin-good", "moxin_plugin_good", GOOD_PLUGIN),
        _distribution(root, "moxin-plugin-broken", "moxin_plugin_broken", BROKEN_PLUGIN),
        _distribution(root, "moxin-plugin-dup-a", "moxin_plugin_dup_a", DUP_PLUGIN),
        _distribution(root, "moxin-plugin-dup-b", "moxin_plugin_dup_b", DUP_PLUGIN),
    ]
    target = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--target", str(target), *map(str, dists)],
                   check=True, capture_output=True, text=True)
    return target


def _env(target: Path, **extra: str) -> dict:
    return {"PYTHONPATH": os.pathsep.join([str(target), str(Path(__file__).parents[1])]), **extra}


def test_installed_plugins_are_discovered_and_broken_one_is_reported(installed_plugins):
    result = run_cli("plugins", "--json", env=_env(installed_plugins))
    assert result.returncode == 0, result.stderr
    entries = {e["distribution"]: e for e in json.loads(result.stdout)}
    good = entries["moxin-plugin-good"]
    assert good["error"] is None and good["version"] == "1.2.3"
    assert good["provides"] == {
        "objectives": ["good-objective"], "data_sources": ["good-source"],
        "vision_encoders": ["good-vision"], "exporters": ["good-export"],
        "evaluators": ["good-eval"], "reward_functions": ["good-reward"],
        "runtimes": ["good-runtime"], "models": ["good-model"], "variants": ["good-variant"]}
    assert set(good["hooks"]) == set(CATEGORIES.values())
    broken = entries["moxin-plugin-broken"]
    assert "ImportError" in broken["error"] and "not installed" in broken["error"]
    assert broken["provides"] == {} and broken["hooks"] == []
    # the built-ins and the other plugins still load
    assert entries["moxin-core"]["error"] is None
    assert "lm" in entries["moxin-core"]["provides"]["objectives"]
    assert entries["moxin-plugin-dup-a"]["error"] is None


def test_strict_mode_reraises_the_import_error(installed_plugins):
    result = run_cli("plugins", env=_env(installed_plugins, MOXIN_STRICT_PLUGINS="1"))
    assert result.returncode != 0
    assert "this plugin needs a package that is not installed" in result.stderr


def test_plugin_model_preset_is_listed(installed_plugins):
    result = run_cli("models", "--json", env=_env(installed_plugins))
    assert result.returncode == 0, result.stderr
    names = {e["name"]: e for e in json.loads(result.stdout)}
    assert names["good-model"]["parameters"] > 0


def test_duplicate_name_fails_naming_both_distributions(installed_plugins, tmp_path):
    result = run_cli("train", "good-variant", "--out", str(tmp_path / "run"),
                     env=_env(installed_plugins))
    assert_clean_error(result, "dup-source", "moxin-plugin-dup-a", "moxin-plugin-dup-b")


# --------------------------------------------------------------------------- in-process managers


class _Plugin:
    def __init__(self, **provides):
        for category, names in provides.items():
            hook = CATEGORIES[category]
            setattr(self, hook, hookimpl(specname=hook)(lambda names=names: {n: object for n in names}))


def _manager(*plugins: tuple[str, object]) -> MoxinPluginManager:
    pm = get_plugin_manager(load_entry_points=False)
    for dist, plugin in plugins:
        pm.register_plugin(plugin, name=dist, distribution=dist, version="0")
    return pm


def test_lookup_does_not_depend_on_load_order():
    a, b = _Plugin(objectives=["x"]), _Plugin(objectives=["y"])
    first = Registry(_manager(("dist-a", a), ("dist-b", b)))
    second = Registry(_manager(("dist-b", b), ("dist-a", a)))
    assert first.names("objectives") == second.names("objectives") == ["x", "y"]


def test_unknown_name_lists_known_names():
    registry = Registry(_manager(("dist-a", _Plugin(variants=["alpha", "beta"]))))
    with pytest.raises(MoxinError, match="Unknown variant 'gamma'. Known variants: alpha, beta"):
        registry.get("variants", "gamma")


def test_unknown_name_mentions_failed_plugins():
    pm = _manager(("dist-a", _Plugin(objectives=["lm"])))
    from moxin_core.plugins import PluginInfo

    pm.infos["broken"] = PluginInfo("broken", "moxin-plugin-x", "1", "ImportError: boom")
    with pytest.raises(PluginLoadError, match="moxin-plugin-x.*ImportError: boom"):
        Registry(pm).get("objectives", "sft")


def test_duplicate_in_one_category_leaves_others_usable():
    pm = _manager(("dist-a", _Plugin(objectives=["same"], models=["m1"])),
                  ("dist-b", _Plugin(objectives=["same"], models=["m2"])))
    registry = Registry(pm)
    with pytest.raises(MoxinError, match="registered twice.*dist-a.*dist-b"):
        registry.get("objectives", "same")
    assert registry.names("models") == ["m1", "m2"]


def test_registry_hook_must_return_a_dict():
    class Bad:
        @hookimpl
        def moxin_models(self):
            return ["not", "a", "dict"]

    with pytest.raises(MoxinError, match="must return a dict"):
        Registry(_manager(("dist-bad", Bad()))).category("models")


def test_misspelled_hook_is_caught_by_check_pending():
    class Typo:
        @hookimpl
        def moxin_objectivs(self):
            return {}

    pm = get_plugin_manager(load_entry_points=False)
    pm.register(Typo())
    from pluggy import PluginValidationError

    with pytest.raises(PluginValidationError):
        pm.check_pending()


def test_no_global_plugin_manager_is_built_at_import():
    code = ("import moxin_core, moxin_core.plugins as p, gc, pluggy; "
            "print(sum(isinstance(o, pluggy.PluginManager) for o in gc.get_objects()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
