"""Model families: how one kind of model is built, loaded, saved, described and sharded.

A stage's ``model`` is one string: a preset name (``moxin-tiny``), a folder or a hub id. Every
step that touches a model goes through the **family** the model belongs to, so the core holds no
knowledge of any one architecture: ``causal-lm`` (transformers causal LMs, the built-in family)
is one family; a vision-language model is another, registered by its plugin through the
``moxin_model_families`` hook.

* A **preset** (``moxin_models`` hook) is a :class:`ModelPreset`: a family name and a config that
  family understands.
* A **folder** written by moxin carries ``moxin.json`` (``{"family": NAME}``) beside the family's
  own files, so ``previous``, ``variant:NAME``, ``moxin export``, the runtimes and the evaluators
  reload it through the same family. A folder without it, or a hub id, belongs to the first
  family whose :meth:`ModelFamily.recognizes` accepts it, ``causal-lm`` last.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moxin_core.errors import MoxinError

#: the file that names a moxin-written folder's family
FAMILY_FILE = "moxin.json"
#: the built-in family, and the one a folder or hub id falls back to
DEFAULT_FAMILY = "causal-lm"


@dataclass
class ModelPreset:
    """A named model configuration (what a ``moxin_models`` factory returns).

    Args:
        family: the registry name of the family that builds it (``causal-lm``).
        config: a configuration object that family understands (for ``causal-lm`` a
            ``transformers.PretrainedConfig``).
        description: one line for ``moxin models``.
    """

    family: str
    config: Any
    description: str = ""


class ModelFamily(ABC):
    """How one kind of model is built, loaded, saved, described and sharded.

    ``model`` below is the ``torch.nn.Module`` the objectives call; ``processor`` is what turns
    records into model inputs (a tokenizer for ``causal-lm``; a tokenizer and an image processor
    for a vision-language model). ``source`` is a folder or a hub id.
    """

    name: str = "family"

    # -- identification
    def recognizes(self, source: str) -> bool:
        """Whether a folder or hub id without ``moxin.json`` holds a model of this family.

        Consulted for every family but the default one, in name order; the default family
        (``causal-lm``) takes what no other family claims.
        """
        return False

    # -- configs
    @abstractmethod
    def load_config(self, source: str) -> Any:
        """The config of the model at ``source`` (MoxinError when it is missing or unreadable)."""

    def fit_config(self, config: Any, processor: Any) -> Any:
        """A preset's config adjusted to the processor (e.g. the vocabulary size); a copy."""
        return config

    @abstractmethod
    def config_to_dict(self, config: Any) -> dict[str, Any]:
        """JSON-able form of ``config`` (stored in a stage's ``model.json``)."""

    @abstractmethod
    def config_from_dict(self, data: dict[str, Any]) -> Any:
        """Inverse of :meth:`config_to_dict`."""

    def describe(self, config: Any) -> dict[str, Any]:
        """``{"parameters": exact count, "config": dict, "max_length": int | None}``.

        The default counts the parameters of the model built on the meta device (no memory).
        """
        with torch.device("meta"):
            model = self.build(config)
        return {"parameters": sum(p.numel() for p in model.parameters()),
                "config": self.config_to_dict(config), "max_length": self.max_length(config)}

    def max_length(self, config: Any) -> int | None:
        """The longest sequence the model takes (``seq_len`` is checked against it), if any."""
        return None

    def vocab_size(self, config: Any) -> int | None:
        """The text vocabulary size (``tokenizer: embedded`` trains a tokenizer of this size)."""
        return getattr(config, "vocab_size", None)

    # -- composites: a preset built from other models (a VLM from a language model)
    def references(self, config: Any) -> dict[str, str]:
        """The other models a preset's ``config`` is built from, ``{role: model}``: each a preset
        name, a folder, a hub id, ``previous`` or ``variant:NAME``, as a stage's ``model``.

        ``moxin train`` resolves them as it resolves a stage's ``model`` (``previous`` and
        ``variant:NAME`` to folders in the same ``--out``) and passes the results to
        :meth:`bind_references` before building. The default: none.
        """
        return {}

    def bind_references(self, config: Any, sources: dict[str, str]) -> Any:
        """``config`` with the resolved ``sources`` of :meth:`references` (a copy)."""
        return config

    def processor_source(self, config: Any) -> str | None:
        """Where the processor of a model built from the preset ``config`` comes from when the
        stage names no ``tokenizer`` (a composite: its language model's folder); None: the stage
        must name one."""
        return None

    def fit_processor(self, processor: Any, config: Any) -> Any:
        """``processor`` completed for the model of ``config`` (a VLM adds its encoder's image
        transform); called by ``moxin train`` right after loading the processor."""
        return processor

    # -- models
    @abstractmethod
    def build(self, config: Any) -> torch.nn.Module:
        """A model with random weights for ``config``, in fp32.

        Called inside ``torch.device("meta")`` when the run shards the model, so that no rank
        materialises the whole model; :meth:`init_weights` then initialises each shard.
        """

    @abstractmethod
    def load(self, source: str) -> torch.nn.Module:
        """The pretrained model at ``source``, in fp32, in training mode."""

    @abstractmethod
    def save(self, model: torch.nn.Module, processor: Any, out: Path,
             processor_source: str | Path | None = None) -> Path:
        """Write ``model`` and ``processor`` to the folder ``out`` (its tools load it without
        moxin), plus ``moxin.json``; ``processor_source`` is where the processor was loaded from
        (files it does not re-save, such as a sentencepiece model, are copied from there)."""

    def check(self, model: torch.nn.Module, processor: Any, seq_len: int, where: str) -> None:
        """Raise MoxinError when ``model``, ``processor`` and ``seq_len`` do not fit together."""

    # -- processors
    @abstractmethod
    def load_processor(self, source: str | Path) -> Any:
        """The processor stored at ``source`` (a folder or hub id)."""

    @abstractmethod
    def save_processor(self, processor: Any, out: Path,
                       source: str | Path | None = None) -> None:
        """Write ``processor`` to the folder ``out``."""

    # -- sharding
    def block_types(self, model: torch.nn.Module) -> tuple[type, ...]:
        """Module classes sharded one by one under FSDP (for transformers models, the classes of
        ``_no_split_modules``: the decoder layers)."""
        names = set(getattr(model, "_no_split_modules", None) or ())
        return tuple({type(m) for m in model.modules() if type(m).__name__ in names})

    def init_weights(self, model: torch.nn.Module) -> None:
        """Initialise every parameter and buffer of a model materialised from the meta device
        (``to_empty``): random weights as :meth:`build` would draw them."""
        raise MoxinError(f"Model family {self.name!r} cannot initialise a model built on the meta "
                         "device; train it without a sharding strategy.")

    def start_state_dict(self, config: Any) -> dict[str, torch.Tensor]:
        """For a preset built from other models (:meth:`references`), the weights its
        :meth:`build` takes from them, keyed like the built model's state dict; loaded over
        :meth:`init_weights`'s random weights when the model is built sharded on the meta
        device (rank 0 calls this). The default: none, the preset starts random."""
        return {}

    def state_dict_for_loading(self, source: str) -> dict[str, torch.Tensor]:
        """The weights at ``source`` as a state dict with the keys of :meth:`build`'s model
        (loaded into a sharded model, rank 0 reading)."""
        raise MoxinError(f"Model family {self.name!r} cannot load weights into a sharded model.")


# ---------------------------------------------------------------------------------------------
# Which family a model reference belongs to
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelRef:
    """A resolved ``model`` string: its family, and either a preset or a source to load."""

    name: str
    family: ModelFamily
    preset: ModelPreset | None = None
    source: str | None = None

    @property
    def is_preset(self) -> bool:
        return self.preset is not None

    def config(self) -> Any:
        """The preset's config, or the config stored at the source."""
        if self.preset is not None:
            return self.preset.config
        return self.family.load_config(self.source)


def write_family_file(out: Path, family: str) -> None:
    (Path(out) / FAMILY_FILE).write_text(json.dumps({"family": family}) + "\n")


def family_name_in(folder: Path) -> str | None:
    """The family named by a moxin-written folder's ``moxin.json`` (None without one)."""
    marker = Path(folder) / FAMILY_FILE
    if not marker.is_file():
        return None
    try:
        name = json.loads(marker.read_text())["family"]
    except (ValueError, KeyError, TypeError):
        raise MoxinError(f"{marker} is not valid: expected {{\"family\": NAME}}.") from None
    if not isinstance(name, str):
        raise MoxinError(f"{marker}: `family` must be a string, got {name!r}.")
    return name


def get_family(registry: Any, name: str) -> ModelFamily:
    """The family registered as ``name`` (an instance; factories are called once per lookup)."""
    family = registry.get("model_families", name)()
    if not isinstance(family, ModelFamily):
        raise MoxinError(f"The model family factory {name!r} returned {type(family).__name__}, "
                         "not a moxin_core.api.ModelFamily.")
    return family


def family_for_source(registry: Any, source: str) -> ModelFamily:
    """The family of a folder (``moxin.json``, else recognition) or hub id."""
    folder = Path(source).expanduser()
    named = family_name_in(folder) if folder.is_dir() else None
    if named is None and folder.is_dir() and (folder / "hf").is_dir():
        named = family_name_in(folder / "hf")  # a stage folder
    if named is not None:
        return get_family(registry, named)
    for name in registry.names("model_families"):
        if name != DEFAULT_FAMILY:
            family = get_family(registry, name)
            if family.recognizes(str(source)):
                return family
    return get_family(registry, DEFAULT_FAMILY)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or (len(Path(name).parts) > 1 and Path(name).exists())


def resolve_model(registry: Any, model: str) -> ModelRef:
    """Resolve a stage's ``model`` string: a preset name, a folder or a hub id.

    Errors (an unknown preset, a missing folder) name the string and what it could be.
    """
    presets = registry.category("models")
    if model in presets:
        preset = presets[model]()
        if not isinstance(preset, ModelPreset):
            raise MoxinError(f"The model preset {model!r} returned {type(preset).__name__}; a "
                             "moxin_models factory must return a moxin_core.api.ModelPreset.")
        return ModelRef(model, get_family(registry, preset.family), preset=preset)
    path = Path(model).expanduser()
    if path.is_dir():
        marks = ("config.json", "moxin.json")
        if not any((path / m).exists() for m in marks) and any((path / "hf" / m).exists()
                                                                  for m in marks):
            path = path / "hf"  # a finished stage folder (OUT/STAGE): the model it exported
        return ModelRef(model, family_for_source(registry, str(path)), source=str(path))
    if _looks_like_path(model):
        raise MoxinError(f"Model path {model!r} does not exist. Give a preset name "
                         "(`moxin models`), a model folder or a hub id.")
    if "/" not in model:  # hub ids are "org/name": this can only be a mistyped preset
        raise MoxinError(f"Unknown model preset {model!r}. Known presets: {', '.join(presets)}. "
                         "A model can also be a model folder or a hub id such as "
                         "'moxin-org/moxin-llm-7b'.")
    return ModelRef(model, family_for_source(registry, model), source=model)
