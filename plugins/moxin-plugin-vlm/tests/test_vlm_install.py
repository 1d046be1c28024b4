"""`pip install moxin-plugin-vlm` adds the VLM to an installed core: a fresh virtual environment
gets the core (a built wheel, not this checkout), then the plugin, and `moxin` finds it through
its entry point alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
PLUGIN = Path(__file__).resolve().parents[1]

#: what the shared environment holds of moxin itself (editable installs): left out of the new one
OWN = ("moxin", "__editable__", "distutils-precedence.pth")

#: left in the environment by libraries other tests run in-process; a child would read them as a
#: launcher's settings
DISTRIBUTED_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE",
                   "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK")


def _fresh_venv(root: Path) -> Path:
    """A new virtual environment that sees the field's libraries already installed here (torch,
    Lightning, transformers, timm, ...: linked, not downloaded) but nothing of moxin."""
    venv = root / "venv"
    # no pip or setuptools of its own: those of the shared environment (newer) come linked
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    libraries = root / "libraries"
    libraries.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(OWN):
            (libraries / entry.name).symlink_to(entry)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "field-libraries.pth").write_text(f"{libraries}\n")
    return venv


def _copy_source(source: Path, target: Path) -> Path:
    """A copy of a distribution's source, so building it writes nothing into this checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "tests", ".venv",
                                    "plugins", "runs", "docs", "benchmarks", "examples")
    shutil.copytree(source, target, ignore=ignore)
    return target


def _run(venv: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in DISTRIBUTED_ENV and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=venv.parent)


def _pip_install(venv: Path, source: Path) -> None:
    # offline: every dependency is among the linked libraries, or the install fails here
    result = _run(venv, "python", "-m", "pip", "install", "--quiet", "--no-index",
                  "--no-build-isolation", str(source))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def _plugins(venv: Path) -> dict:
    result = _run(venv, "moxin", "plugins", "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return {entry["distribution"]: entry for entry in json.loads(result.stdout)}


@pytest.mark.slow
def test_pip_install_adds_the_vlm_to_an_installed_core(tmp_path, lm_folder):
    venv = _fresh_venv(tmp_path)
    _pip_install(venv, _copy_source(REPO, tmp_path / "src" / "moxin-core"))
    core_only = _plugins(venv)
    assert set(core_only) == {"moxin-core"}
    assert "moxin-tiny-vlm" not in _run(venv, "moxin", "variants").stdout

    _pip_install(venv, _copy_source(PLUGIN, tmp_path / "src" / "moxin-plugin-vlm"))
    found = _plugins(venv)
    assert set(found) == {"moxin-core", "moxin-plugin-vlm"}
    vlm = found["moxin-plugin-vlm"]
    assert vlm["error"] is None and vlm["version"] == "0.1.0"
    assert vlm["provides"]["model_families"] == ["vlm"]
    assert {"moxin-vlm", "moxin-tiny-vlm"} <= set(vlm["provides"]["variants"])
    assert {"dinosiglip", "tiny-vit"} <= set(vlm["provides"]["vision_encoders"])
    # the installed copy runs, not this checkout
    where = _run(venv, "python", "-c", "import moxin_plugin_vlm, moxin_core; "
                 "print(moxin_plugin_vlm.__file__); print(moxin_core.__file__)").stdout
    assert str(REPO) not in where and str(venv) in where

    out = tmp_path / "run"
    # the tiny VLM builds on moxin-tiny-instruct's model; without moxin-plugin-instruct the
    # error says so and how to point it at a language model instead
    missing = _run(venv, "moxin", "train", "moxin-tiny-vlm", "--out", str(out), "--max-steps", "2")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "variant 'moxin-tiny-instruct' (variant:moxin-tiny-instruct), which no installed " \
           "plugin provides" in missing.stderr and "vlm.references.ROLE" in missing.stderr

    trained = _run(venv, "moxin", "train", "moxin-tiny-vlm", "--out", str(out), "--max-steps",
                   "2", "--set", f"vlm.references.llm={lm_folder}", "--set",
                   "micro_batch_size=4", "--set", "vlm.evaluators=[{name: heldout-shapes, num: 4}]")
    assert trained.returncode == 0, trained.stderr[-4000:]
    assert "stage vlm: 2 steps" in trained.stdout
    manifest = json.loads((out / "vlm" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["steps"] == 2
    assert {p["distribution"] for p in manifest["plugins"]} == {"moxin-core", "moxin-plugin-vlm"}
    assert (out / "vlm" / "hf" / "vlm.json").exists()
