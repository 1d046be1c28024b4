"""Building blocks for plain ``Trainer.fit`` scripts, and the ones ``moxin train`` itself uses.

``build_objective``, ``build_datamodule`` and ``build_module`` resolve plugin names (objectives,
data sources, model presets and families) to the objects a stage trains with.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moxin_core.corpus import iter_corpus
from moxin_core.data.datamodule import MoxinDataModule, build_mixture
from moxin_core.errors import MoxinError
from moxin_core.models.family import ModelFamily, ModelRef, resolve_model
from moxin_core.models.loading import load_model  # noqa: F401  (training.blocks' name too)
from moxin_core.module import ModelRecipe, MoxinModule
from moxin_core.objectives.base import Objective
from moxin_core.tokenizer import train_tokenizer
from moxin_core.variants import DataSpec, HyperParameters

#: ``tokenizer: embedded`` in a variant: train the project's tokenizer on the embedded corpus.
EMBEDDED_TOKENIZER = "embedded"
EMBEDDED_TOKENIZER_DOCUMENTS = 20000


def build_objective(registry: Any, name: str, options: dict[str, Any] | None = None
                    ) -> Objective:
    """The objective registered as ``name``, built with ``options``."""
    factory = registry.get("objectives", name)
    try:
        return factory(**(options or {}))
    except TypeError as exc:
        raise MoxinError(f"Objective {name!r}: bad options {sorted(options or {})} ({exc}).") from None


def build_datamodule(registry: Any, data: Sequence[DataSpec], objective: Objective,
                     processor: Any, seq_len: int, micro_batch_size: int, seed: int = 0,
                     sharding: str = "examples", workers: int = 0) -> MoxinDataModule:
    """A datamodule streaming the named, weighted data sources through ``objective``."""
    mixture = build_mixture(registry, data, seed)
    return MoxinDataModule(mixture, objective, processor, seq_len, micro_batch_size,
                           sharding=sharding, workers=workers)


def model_recipe(ref: ModelRef, processor: Any, seed: int = 0,
                 references: dict[str, str] | None = None) -> ModelRecipe:
    """How to build the model ``ref`` names: a preset's config (bound to the models it is built
    from, ``references``) fitted to the processor (random weights drawn with ``seed``), or the
    pretrained source."""
    if ref.is_preset:
        config = ref.preset.config
        if references:
            config = ref.family.bind_references(config, references)
        return ModelRecipe(ref.family, ref.family.fit_config(config, processor), seed=seed)
    return ModelRecipe(ref.family, ref.config(), source=ref.source, seed=seed)


def build_module(registry: Any, model: str, objective: Objective, processor: Any,
                 hparams: HyperParameters | None = None, lazy: bool = False,
                 stage_dir: str | Path | None = None,
                 references: dict[str, str] | None = None) -> MoxinModule:
    """A ``MoxinModule`` around ``model`` (preset, folder or hub id) sized to ``processor``;
    ``references``: the resolved models a composite preset is built from.

    ``lazy``: build the model when the fit starts (``configure_model``) instead of now; a
    sharding strategy (``fsdp``) then builds it on the meta device and materialises only each
    rank's shard.
    """
    hparams = hparams or HyperParameters()
    ref = resolve_model(registry, model)
    recipe = model_recipe(ref, processor, hparams.seed, references)
    where = f"model {model!r}"
    network = None if lazy else recipe.build()
    ref.family.check(network if network is not None else _shape_only(ref.family, recipe.config),
                     processor, hparams.seq_len, where)
    return MoxinModule(network, objective, hparams, processor=processor, registry=registry,
                       stage_dir=stage_dir, family=ref.family, recipe=recipe)


def _shape_only(family: ModelFamily, config: Any) -> Any:
    import torch

    with torch.device("meta"):
        return family.build(config)


def ensure_embedded_tokenizer(out: Path, vocab_size: int) -> Path:
    """Train the project's tokenizer on the embedded corpus into ``out`` unless it is there.

    Written to a temporary folder and renamed into place: processes started together (several
    ranks) never read a half-written tokenizer, and the same corpus gives them the same one.
    """
    out = Path(out)
    if (out / "tokenizer.model").exists() and (out / "tokenizer_config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        texts = (r["text"] for r in iter_corpus(seed=0, num_documents=EMBEDDED_TOKENIZER_DOCUMENTS))
        train_tokenizer(texts, vocab_size, staging)
        try:
            staging.rename(out)
        except OSError:
            if not (out / "tokenizer.model").exists():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
