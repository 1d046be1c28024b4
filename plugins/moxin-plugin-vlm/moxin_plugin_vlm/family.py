"""The ``vlm`` model family: build, save, reload and describe vision-language models.

A preset's config is a dict::

    {"encoder": {"name": "tiny-vit", "options": {}},   # a vision encoder and its options
     "projector": "gelu-mlp",                          # linear | gelu-mlp | fused-gelu-mlp
     "llm": "variant:moxin-tiny-instruct",             # the language model it is built from
     "pad_token": "<PAD>",                             # added when the tokenizer has none
     "pad_to_multiple_of": 64}                         # embedding rows (32000 -> 32064)

``llm`` is a model reference like a stage's ``model`` (a folder, a hub id, ``previous`` or
``variant:NAME``): ``moxin train`` resolves it and the VLM is built from that language model's
weights and tokenizer, with a new projector and the encoder's weights (random unless the encoder
options name weights). Once bound, the config also holds ``lm``, the language model's config.

A saved VLM is a folder::

    vlm.json                 encoder, projector, lm config
    vision.safetensors       encoder weights
    projector.safetensors    projector weights
    image.json               the image transform (size, mean, std, resize strategy)
    lm/                      the language model with its tokenizer: a plain transformers folder
    moxin.json               {"family": "vlm"}

so ``lm/`` loads with ``AutoModelForCausalLM`` alone, and the whole folder reloads in a fresh
process through this family.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from moxin_core.api import CausalLMFamily, ModelFamily, MoxinError

from moxin_plugin_vlm.encoders import FusedViT, ImageTransform, TimmViT
from moxin_plugin_vlm.model import VisionLanguageModel, build_encoder

CONFIG_FILE = "vlm.json"
IMAGE_FILE = "image.json"
LM_DIR = "lm"


class VLMProcessor:
    """The language model's tokenizer and the vision encoder's image transform."""

    def __init__(self, tokenizer: Any, transform: ImageTransform | None = None,
                 tokenizer_source: str | Path | None = None) -> None:
        self.tokenizer, self.transform = tokenizer, transform
        self.tokenizer_source = tokenizer_source

    def __len__(self) -> int:
        return len(self.tokenizer)

    def image(self, image) -> torch.Tensor:
        if self.transform is None:
            raise MoxinError("This processor has no image transform: load it from a VLM folder "
                             "or through the vlm family of a stage.")
        return self.transform(image)


def _text_family() -> CausalLMFamily:
    return CausalLMFamily()


class VLMFamily(ModelFamily):
    name = "vlm"

    def recognizes(self, source: str) -> bool:
        return (Path(source) / CONFIG_FILE).is_file()

    # -- configs
    def load_config(self, source: str) -> dict:
        path = Path(source) / CONFIG_FILE
        if not path.is_file():
            raise MoxinError(f"{source} is not a moxin VLM folder: {CONFIG_FILE} is missing.")
        try:
            return json.loads(path.read_text())
        except ValueError as error:
            raise MoxinError(f"{path} is not valid JSON: {error}.") from None

    def references(self, config: dict) -> dict[str, str]:
        return {"llm": config["llm"]} if config.get("llm") and not config.get("lm") else {}

    def bind_references(self, config: dict, sources: dict[str, str]) -> dict:
        config = copy.deepcopy(config)
        if "llm" in sources:
            config["llm"] = str(sources["llm"])
            config["lm"] = _text_family().config_to_dict(
                _text_family().load_config(str(sources["llm"])))
        return config

    def processor_source(self, config: dict) -> str | None:
        return config.get("llm")

    def fit_config(self, config: dict, processor: Any) -> dict:
        config = copy.deepcopy(config)
        if config.get("lm") is None:
            raise MoxinError("A vlm preset needs its language model: set `llm` in the preset "
                             "(a folder, hub id or variant:NAME) and train it with moxin train.")
        vocab = max(int(config["lm"]["vocab_size"]), len(processor))
        multiple = int(config.get("pad_to_multiple_of") or 1)
        config["lm"]["vocab_size"] = -(-vocab // multiple) * multiple
        return config

    def config_to_dict(self, config: dict) -> dict:
        return copy.deepcopy(config)

    def config_from_dict(self, data: dict) -> dict:
        return copy.deepcopy(data)

    def max_length(self, config: dict) -> int | None:
        lm = config.get("lm") or {}
        length = lm.get("max_position_embeddings")
        if length is None:
            return None
        with torch.device("meta"):
            patches = int(build_encoder(config["encoder"]).num_patches)
        return int(length) - patches

    def vocab_size(self, config: dict) -> int | None:
        return (config.get("lm") or {}).get("vocab_size")

    def describe(self, config: dict) -> dict:
        """Parameters per part; a preset whose language model is still a reference
        (``variant:NAME``) counts its encoder only and gives ``parameters: None``."""
        if config.get("lm") is None:
            with torch.device("meta"):
                vision = sum(p.numel() for p in build_encoder(config["encoder"]).parameters())
            return {"parameters": None, "parts": {"vision": vision},
                    "language_model": config.get("llm"), "config": self.config_to_dict(config),
                    "max_length": None}
        with torch.device("meta"):
            model = self._build(config, pretrained_lm=False)
        parts = {name: sum(p.numel() for p in getattr(model, name).parameters())
                 for name in ("vision", "projector", "language_model")}
        return {"parameters": sum(parts.values()), "parts": parts,
                "config": self.config_to_dict(config), "max_length": self.max_length(config)}

    # -- models
    def _build(self, config: dict, pretrained_lm: bool) -> VisionLanguageModel:
        text = _text_family()
        lm_config = text.config_from_dict(config["lm"])
        if pretrained_lm and config.get("llm"):
            language_model = text.load(config["llm"])
        else:
            language_model = text.build(lm_config)
        model = VisionLanguageModel(config, language_model)
        if language_model.config.vocab_size < lm_config.vocab_size:
            # rows for <PAD> and up to the multiple of 64 (after the projector's and encoder's
            # random weights are drawn, so those do not depend on the vocabulary)
            language_model.resize_token_embeddings(lm_config.vocab_size, mean_resizing=False)
        return model

    def build(self, config: dict) -> VisionLanguageModel:
        """The language model from ``llm`` (its trained weights), a new projector, the encoder
        (random unless its options name weights). On the meta device (a sharded run) the
        structure only: :meth:`init_weights` and :meth:`start_state_dict` fill it."""
        if _on_meta():
            meta = copy.deepcopy(config)
            meta["encoder"] = _without_weights(meta["encoder"])
            return self._build(meta, pretrained_lm=False).train()
        return self._build(config, pretrained_lm=True).train()

    def load(self, source: str) -> VisionLanguageModel:
        from safetensors.torch import load_file

        folder = Path(source)
        config = _self_contained(self.load_config(source))
        language_model = _text_family().load(str(folder / LM_DIR))
        model = VisionLanguageModel(config, language_model)
        for part in ("vision", "projector"):
            path = folder / f"{part}.safetensors"
            if not path.is_file():
                raise MoxinError(f"{folder} is missing {path.name}; it is not a complete VLM.")
            getattr(model, part).load_state_dict(load_file(str(path)))
        return model.train()

    def save(self, model: VisionLanguageModel, processor: VLMProcessor, out: Path,
             processor_source: str | Path | None = None) -> Path:
        from safetensors.torch import save_file

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        text = _text_family()
        text.save(model.language_model, processor.tokenizer, out / LM_DIR,
                  _tokenizer_source(processor, processor_source))
        for part in ("vision", "projector"):
            state = {k: v.detach().contiguous().cpu()
                     for k, v in getattr(model, part).state_dict().items()}
            save_file(state, str(out / f"{part}.safetensors"))
        config = _self_contained(self.config_to_dict(model.config))
        config["lm"] = text.config_to_dict(model.language_model.config)
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        self._save_image(processor, out)
        (out / "moxin.json").write_text(json.dumps({"family": self.name}) + "\n")
        return out

    # -- sharding (FSDP): decoder layers and vision blocks sharded one by one
    def block_types(self, model: torch.nn.Module) -> tuple[type, ...]:
        vision = {type(block) for vit in _towers(model.vision) for block in vit.vit.blocks}
        return (*_text_family().block_types(model.language_model), *vision)

    def init_weights(self, model: VisionLanguageModel) -> None:
        """Random weights as :meth:`build` draws them, part by part: the language model by
        transformers' rules, each timm tower by its own ``init_weights``, the projector's
        layers by ``reset_parameters``; the fused encoder's normalisation buffers recomputed."""
        _text_family().init_weights(model.language_model)
        for tower in _towers(model.vision):
            tower.vit.init_weights()
        for module in model.vision.modules():
            if isinstance(module, FusedViT):
                module.fill_stats()
        for module in model.projector.modules():
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()

    def start_state_dict(self, config: dict) -> dict[str, torch.Tensor]:
        """A preset's inherited weights: the language model's from ``llm`` (the embedding and
        output rows added for ``<PAD>`` and the multiple of 64 drawn as transformers draws new
        rows) and the encoder's when its options name weights."""
        state: dict[str, torch.Tensor] = {}
        if config.get("llm") and config.get("lm"):
            text = _text_family()
            lm = text.state_dict_for_loading(config["llm"])
            rows = int(config["lm"]["vocab_size"])
            std = float(config["lm"].get("initializer_range", 0.02))
            generator = torch.Generator().manual_seed(0)
            for key in ("model.embed_tokens.weight", "lm_head.weight"):
                if key in lm and lm[key].shape[0] < rows:
                    extra = torch.randn(rows - lm[key].shape[0], lm[key].shape[1],
                                        generator=generator) * std
                    lm[key] = torch.cat([lm[key], extra.to(lm[key].dtype)])
            state.update({f"language_model.{k}": v for k, v in lm.items()})
        if _without_weights(config["encoder"]) != config["encoder"]:
            encoder = build_encoder(config["encoder"])  # reads the weights named (CPU)
            state.update({f"vision.{k}": v for k, v in encoder.state_dict().items()})
        return state

    def state_dict_for_loading(self, source: str) -> dict[str, torch.Tensor]:
        """A saved VLM folder's weights, keyed like :meth:`build`'s model."""
        from safetensors.torch import load_file

        folder = Path(source)
        state = {f"language_model.{k}": v for k, v in
                 _text_family().state_dict_for_loading(str(folder / LM_DIR)).items()}
        for part in ("vision", "projector"):
            path = folder / f"{part}.safetensors"
            if not path.is_file():
                raise MoxinError(f"{folder} is missing {path.name}; it is not a complete VLM.")
            state.update({f"{part}.{k}": v for k, v in load_file(str(path)).items()})
        return state

    # -- processors
    def load_processor(self, source: str | Path) -> VLMProcessor:
        folder = Path(source)
        tokenizer_dir = folder / LM_DIR if (folder / LM_DIR).is_dir() else folder
        if (folder / "tokenizer").is_dir() and \
                not (tokenizer_dir / "tokenizer_config.json").exists():
            tokenizer_dir = folder / "tokenizer"
        tokenizer = _text_family().load_processor(str(tokenizer_dir))
        transform = None
        if (folder / IMAGE_FILE).is_file():
            transform = ImageTransform(**json.loads((folder / IMAGE_FILE).read_text()))
        return VLMProcessor(tokenizer, transform, tokenizer_dir)

    def fit_processor(self, processor: Any, config: dict) -> VLMProcessor:
        if not isinstance(processor, VLMProcessor):  # a plain tokenizer
            processor = VLMProcessor(processor)
        pad = config.get("pad_token")
        if pad and processor.tokenizer.pad_token is None:  # prismatic adds <PAD>
            processor.tokenizer.add_special_tokens({"pad_token": pad})
        if processor.transform is None:
            with torch.device("meta"):
                processor.transform = build_encoder(config["encoder"]).transform
        return processor

    def save_processor(self, processor: VLMProcessor, out: Path,
                       source: str | Path | None = None) -> None:
        out = Path(out)
        _text_family().save_processor(processor.tokenizer, out,
                                      _tokenizer_source(processor, source))
        self._save_image(processor, out)

    def _save_image(self, processor: VLMProcessor, out: Path) -> None:
        if processor.transform is not None:
            (Path(out) / IMAGE_FILE).write_text(json.dumps(processor.transform.to_dict()) + "\n")


def _on_meta() -> bool:
    """Whether new tensors land on the meta device (inside ``torch.device("meta")``)."""
    return torch.empty(()).device.type == "meta"


def _without_weights(encoder: dict) -> dict:
    """An encoder spec that builds the structure without reading weight files or the hub."""
    encoder = copy.deepcopy(encoder)
    options = encoder.get("options") or {}
    for key in ("weights", "pretrained"):
        options.pop(key, None)
    return encoder


def _towers(vision: torch.nn.Module) -> list[TimmViT]:
    return [m for m in vision.modules() if isinstance(m, TimmViT)]


def _self_contained(config: dict) -> dict:
    """A saved VLM's config: its weights are in the folder, so the encoder is built without
    weight files or hub downloads, and the language model reference is dropped."""
    config = copy.deepcopy(config)
    config.pop("llm", None)
    if "encoder" in config:
        config["encoder"] = _without_weights(config["encoder"])
    return config


def _tokenizer_source(processor: VLMProcessor, source: str | Path | None):
    if processor.tokenizer_source is not None:
        return processor.tokenizer_source
    if source is not None and (Path(source) / LM_DIR).is_dir():
        return Path(source) / LM_DIR
    return source
