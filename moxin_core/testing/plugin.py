"""The pytest plugin ``moxin`` (entry point group ``pytest11``): fixtures for plugin tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import pytest

#: what a fit in this process may leave in the environment; a child process would take them for
#: a distributed launcher's settings
DISTRIBUTED_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE",
                   "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK")


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child ``moxin`` process: offline, no distributed
    settings."""
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    return {**env, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(extra or {})}


@pytest.fixture
def moxin_subprocess_env() -> Callable[..., dict[str, str]]:
    return subprocess_env


@pytest.fixture
def moxin_registry() -> Any:
    from moxin_core.plugins import Registry

    return Registry()


@pytest.fixture
def moxin_register() -> Callable[..., Any]:
    """``moxin_register(*plugins)``: a registry of the installed plugins and ``plugins``."""
    from moxin_core.plugins import Registry, get_plugin_manager

    def register(*plugins: Any) -> Any:
        pm = get_plugin_manager()
        for index, plugin in enumerate(plugins):
            pm.register_plugin(plugin, f"test-plugin-{index}", "<test>")
        return Registry(pm)

    return register


@pytest.fixture(scope="session")
def moxin_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from moxin_core.training.blocks import ensure_embedded_tokenizer

    return ensure_embedded_tokenizer(tmp_path_factory.mktemp("moxin-tok") / "tokenizer", 512)


@pytest.fixture(scope="session")
def moxin_tokenizer(moxin_tokenizer_dir: Path) -> Any:
    from moxin_core.tokenizer import load_tokenizer

    return load_tokenizer(moxin_tokenizer_dir)


@pytest.fixture(scope="session")
def moxin_tiny_model(moxin_tokenizer: Any) -> Callable[[], Any]:
    """A factory: every call builds the same tiny causal LM (seed 0), sized to the tokenizer."""
    import torch

    from moxin_core.models.causal_lm import CausalLMFamily
    from moxin_core.models.presets import BUILTIN_PRESETS

    family = CausalLMFamily()
    config = family.fit_config(BUILTIN_PRESETS["moxin-nano"]().config, moxin_tokenizer)

    def build() -> Any:
        torch.manual_seed(0)
        return family.build(config).train()

    return build


@pytest.fixture(scope="session")
def moxin_model_folder(tmp_path_factory: pytest.TempPathFactory, moxin_tiny_model: Callable,
                       moxin_tokenizer: Any, moxin_tokenizer_dir: Path) -> Path:
    """A model folder (``causal-lm``: transformers files, tokenizer, ``moxin.json``) of the
    ``moxin_tiny_model`` model with the ``moxin_tokenizer`` tokenizer, written once per
    session: what exporters and evaluators are given. Treat it as read-only."""
    from moxin_core.models.causal_lm import CausalLMFamily

    return CausalLMFamily().save(moxin_tiny_model(), moxin_tokenizer,
                                 tmp_path_factory.mktemp("moxin-model") / "model",
                                 moxin_tokenizer_dir)


@pytest.fixture(scope="session")
def moxin_records() -> Callable[..., list[dict]]:
    """``moxin_records(count, kind="text"|"chat")``: records of the embedded corpus
    (``{"text": ...}``) or of the embedded instructions (``{"messages": [...]}``)."""
    from moxin_core.data.sources import BUILTIN_SOURCES

    def records(count: int = 32, kind: str = "text") -> list[dict]:
        if kind == "text":
            source = BUILTIN_SOURCES["embedded"](num_documents=max(count, 1))
            stream: Iterator[tuple[dict, Any]] = source.iter_from(None)
            return [dict(r) for r, _ in islice(stream, count)]
        raise ValueError(f"moxin_records: kind {kind!r} is not text (chat records come from "
                         "moxin-plugin-instruct's embedded_instructions source)")

    return records


@pytest.fixture
def moxin_datamodule(moxin_registry: Any, moxin_tokenizer: Any) -> Callable[..., Any]:
    """``moxin_datamodule(objective, data=None, seq_len=64, micro_batch_size=2, seed=0)``: the
    data module ``moxin train`` builds for ``objective`` (an :class:`~moxin_core.api.Objective`)
    over ``data`` (``[DataSpec, ...]`` or ``[{"source": NAME, OPTION: VALUE}]``; default the
    embedded corpus), with the ``moxin_tokenizer`` tokenizer; its ``check_data()`` has run."""
    from moxin_core.training.blocks import build_datamodule
    from moxin_core.variants import DataSpec, _data_specs

    def build(objective: Any, data: list | None = None, seq_len: int = 64,
              micro_batch_size: int = 2, seed: int = 0) -> Any:
        data = data or [{"source": "embedded"}]
        # the `data` entries a stage takes (what --set data=... parses), or DataSpecs as they are
        specs = data if all(isinstance(d, DataSpec) for d in data) else _data_specs(
            data, "moxin_datamodule")
        module = build_datamodule(moxin_registry, specs, objective, moxin_tokenizer, seq_len,
                                  micro_batch_size, seed)
        module.check_data()
        return module

    return build
