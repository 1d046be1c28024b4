"""Plugin discovery through the `moxin` entry-point group, isolation of broken plugins, duplicates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from moxin_core import hookimpl
from moxin_core.errors import MoxinError, PluginLoadError
from moxin_core.plugins import CATEGORIES, MoxinPluginManager, Registry, get_plugin_manager
from tests.conftest import (NANO_SETS, assert_clean_error, install_distributions,
                            plugin_distribution as _distribution, plugin_path_env, run_cli)

GOOD_PLUGIN = '''
from moxin_core.api import (CausalLMFamily, Command, DataSpec, ModelPreset, Stage, Variant,
                            hookimpl)
from transformers import MistralConfig


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
    return {"good-model": lambda: ModelPreset("causal-lm", MistralConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=1, vocab_size=300))}


class GoodFamily(CausalLMFamily):
    name = "good-family"


@hookimpl
def moxin_model_families():
    return {"good-family": GoodFamily}


class Greet(Command):
    help = "say hello from a plugin"

    def configure(self, parser):
        parser.add_argument("--name", default="world")

    def run(self, args, registry):
        print(f"hello {args.name} from moxin-plugin-good ({len(registry.names('objectives'))} "
              "objectives installed)")
        return 0


@hookimpl
def moxin_commands():
    return {"good-greet": Greet}

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

MISSPELLED_PLUGIN = '''
from moxin_core.api import hookimpl

@hookimpl
def moxin_objectivs():
    return {"never": dict}
'''

BAD_ARGUMENT_PLUGIN = '''
from moxin_core.api import hookimpl

@hookimpl
def moxin_objectives(registry):
    return {"never-either": dict}
'''

RAISING_PLUGIN = '''
from moxin_core.api import hookimpl

@hookimpl
def moxin_variants():
    raise RuntimeError("variant table is corrupt")
'''

NOT_A_DICT_PLUGIN = '''
from moxin_core.api import hookimpl

@hookimpl
def moxin_models():
    return ["not", "a", "dict"]
'''

#: distribution -> (package, code, what `moxin plugins` must report)
BROKEN = {
    "moxin-plugin-broken": ("moxin_plugin_broken", BROKEN_PLUGIN,
                            "ImportError: this plugin needs a package that is not installed"),
    "moxin-plugin-typo": ("moxin_plugin_typo", MISSPELLED_PLUGIN,
                          "unknown hook 'moxin_objectivs' (did you mean 'moxin_objectives'?)"),
    "moxin-plugin-badarg": ("moxin_plugin_badarg", BAD_ARGUMENT_PLUGIN, "registry"),
    "moxin-plugin-raising": ("moxin_plugin_raising", RAISING_PLUGIN,
                             "RuntimeError: variant table is corrupt"),
    "moxin-plugin-notdict": ("moxin_plugin_notdict", NOT_A_DICT_PLUGIN,
                             "returned list from moxin_models(); a registry hook must return a dict"),
}


@pytest.fixture(scope="module")
def installed_plugins(tmp_path_factory) -> Path:
    """A good plugin, broken ones and two with a clashing name, pip-installed into a target
    folder (not the shared venv)."""
    root = tmp_path_factory.mktemp("dists")
    dists = [
        _distribution(root, "moxin-plugin-good", "moxin_plugin_good", GOOD_PLUGIN),
        _distribution(root, "moxin-plugin-dup-a", "moxin_plugin_dup_a", DUP_PLUGIN),
        _distribution(root, "moxin-plugin-dup-b", "moxin_plugin_dup_b", DUP_PLUGIN),
        *(_distribution(root, dist, package, code)
          for dist, (package, code, _) in BROKEN.items()),
    ]
    return install_distributions(dists, root / "site")


def _env(target: Path, **extra: str) -> dict:
    return {**plugin_path_env(target), **extra}


def test_installed_plugins_are_discovered_and_broken_ones_are_reported(installed_plugins):
    result = run_cli("plugins", "--json", env=_env(installed_plugins))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    entries = {e["distribution"]: e for e in json.loads(result.stdout)}
    good = entries["moxin-plugin-good"]
    assert good["error"] is None and good["version"] == "1.2.3"
    assert good["provides"] == {
        "objectives": ["good-objective"], "data_sources": ["good-source"],
        "vision_encoders": ["good-vision"], "exporters": ["good-export"],
        "evaluators": ["good-eval"], "reward_functions": ["good-reward"],
        "runtimes": ["good-runtime"], "model_families": ["good-family"],
        "models": ["good-model"], "variants": ["good-variant"], "commands": ["good-greet"]}
    assert set(good["hooks"]) == set(CATEGORIES.values())
    for dist, (_, _, message) in BROKEN.items():
        assert message in (entries[dist]["error"] or ""), (dist, entries[dist])
        assert entries[dist]["provides"] == {} and entries[dist]["hooks"] == []
    # the built-ins and the other plugins still load
    assert entries["moxin-core"]["error"] is None
    assert "lm" in entries["moxin-core"]["provides"]["objectives"]
    assert entries["moxin-plugin-dup-a"]["error"] is None
    text = run_cli("plugins", env=_env(installed_plugins))
    assert text.returncode == 0 and "Traceback" not in text.stderr
    assert text.stdout.count("FAILED:") == len(BROKEN)


def test_training_works_beside_broken_plugins(installed_plugins, tmp_path, nano_tokenizer):
    result = run_cli("train", "moxin-tiny-base", "--out", str(tmp_path), "--stage",
                     "pretrain-128", "--max-steps", "2",
                     *sum((["--set", s] for s in NANO_SETS), []),
                     "--set", f"tokenizer={nano_tokenizer}", env=_env(installed_plugins))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stage pretrain-128: 2 steps" in result.stdout
    # a run that needs what a broken plugin would provide names it
    assert_clean_error(run_cli("train", "moxin-tiny-base", "--out", str(tmp_path / "x"),
                               "--set", "data=[{source: never}]", env=_env(installed_plugins)),
                       "Unknown data source 'never'", "moxin-plugin-typo",
                       "unknown hook 'moxin_objectivs'")


def test_plugin_commands_join_the_cli(installed_plugins):
    result = run_cli("good-greet", "--name", "Ada", env=_env(installed_plugins))
    assert result.returncode == 0, result.stderr
    assert "hello Ada from moxin-plugin-good" in result.stdout
    assert "good-greet" in run_cli("--help", env=_env(installed_plugins)).stdout


@pytest.mark.parametrize("dist", sorted(BROKEN))
def test_strict_mode_raises_the_load_error(installed_plugins, dist, tmp_path):
    # only this broken plugin (and the built-ins) on the path
    package, code, message = BROKEN[dist]
    target = install_distributions([_distribution(tmp_path / "src", dist, package, code)],
                                   tmp_path / "one")
    result = run_cli("plugins", env=_env(target, MOXIN_STRICT_PLUGINS="1"))
    assert result.returncode != 0
    assert message.split(": ")[-1].split(" (")[0] in result.stderr


def test_plugin_model_preset_is_listed(installed_plugins):
    result = run_cli("models", "--json", env=_env(installed_plugins))
    assert result.returncode == 0, result.stderr
    names = {e["name"]: e for e in json.loads(result.stdout)}
    assert names["good-model"]["parameters"] > 0 and names["good-model"]["family"] == "causal-lm"


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
    # other names of the same category still resolve
    pm.register_plugin(_Plugin(objectives=["unique"]), name="dist-c", distribution="dist-c")
    assert Registry(pm).get("objectives", "unique") is object


def test_registry_hook_errors_leave_the_plugin_out_in_process():
    class Bad:
        @hookimpl
        def moxin_models(self):
            return ["not", "a", "dict"]

    pm = get_plugin_manager(load_entry_points=False)
    info = pm.register_plugin(Bad(), name="bad", distribution="dist-bad")
    assert "must return a dict" in info.error and not pm.is_registered(info.plugin)
    assert Registry(pm).names("models") == []
    strict = get_plugin_manager(load_entry_points=False, strict=True)
    with pytest.raises(MoxinError, match="must return a dict"):
        strict.register_plugin(Bad(), name="bad", distribution="dist-bad")


def test_no_global_plugin_manager_is_built_at_import():
    code = ("import moxin_core, moxin_core.plugins as p, gc, pluggy; "
            "print(sum(isinstance(o, pluggy.PluginManager) for o in gc.get_objects()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
