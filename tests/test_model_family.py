"""A model family the core knows nothing about, added by a plugin defined here.

``feature-lm`` is a composite: a small feature encoder whose output is projected into two prefix
embeddings, in front of a causal LM; its processor is a tokenizer plus feature normalisation
statistics, and it is saved as a folder of its own (encoder weights, an ``lm/`` transformers
folder, ``composite.json``, ``features.json``). Its plugin also registers an objective, a data
source, a preset and a variant. ``moxin train`` trains it, checkpoints it, resumes it exactly,
starts the next stage from it through ``previous``, and ``moxin export`` writes it, with no change
to the core.
"""

from __future__ import annotations

import copy
import csv
import json
import random
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from moxin_core.api import (DataSource, DataSpec, HyperParameters, ModelFamily, ModelPreset,
                            MoxinError, Objective, Registry, Stage, Variant, get_plugin_manager,
                            hookimpl, load_tokenizer, train_variant)
from moxin_core.cli import main
from moxin_core.reporting import sha256_file

FEATURES = 8
PREFIX = 2


class FeatureLM(torch.nn.Module):
    """Encoder (features -> 2 prefix embeddings) + a Mistral causal LM."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM, MistralConfig

        self.config = config
        self.lm = AutoModelForCausalLM.from_config(MistralConfig(**config["lm"]))
        hidden = config["lm"]["hidden_size"]
        self.encoder = torch.nn.Sequential(torch.nn.Linear(FEATURES, 32), torch.nn.GELU(),
                                           torch.nn.Linear(32, PREFIX * hidden))

    def forward(self, features, input_ids, labels=None):
        embeds = self.lm.get_input_embeddings()(input_ids)
        prefix = self.encoder(features).view(features.shape[0], PREFIX, -1)
        inputs = torch.cat([prefix, embeds], dim=1)
        if labels is not None:
            ignore = torch.full((labels.shape[0], PREFIX), -100, dtype=labels.dtype,
                                device=labels.device)
            labels = torch.cat([ignore, labels], dim=1)
        return self.lm(inputs_embeds=inputs, labels=labels, use_cache=False)


class FeatureProcessor:
    """A tokenizer and the features' mean and standard deviation."""

    def __init__(self, tokenizer, mean: float = 0.0, std: float = 1.0) -> None:
        self.tokenizer, self.mean, self.std = tokenizer, mean, std

    def __len__(self) -> int:
        return len(self.tokenizer)

    def features(self, values: list[float]) -> list[float]:
        return [(v - self.mean) / self.std for v in values]


class FeatureLMFamily(ModelFamily):
    name = "feature-lm"

    def recognizes(self, source: str) -> bool:
        return (Path(source) / "composite.json").is_file()

    def load_config(self, source: str) -> dict:
        return json.loads((Path(source) / "composite.json").read_text())

    def fit_config(self, config: dict, processor) -> dict:
        config = copy.deepcopy(config)
        config["lm"]["vocab_size"] = max(config["lm"]["vocab_size"], len(processor))
        return config

    def config_to_dict(self, config: dict) -> dict:
        return copy.deepcopy(config)

    # a composite preset: {"lm_from": MODEL} builds on another feature-lm's language model
    def references(self, config: dict) -> dict:
        return {"lm": config["lm_from"]} if "lm_from" in config and "lm" not in config else {}

    def bind_references(self, config: dict, sources: dict) -> dict:
        config = copy.deepcopy(config)
        config["lm_from"] = sources["lm"]
        config["lm"] = self.load_config(sources["lm"])["lm"]
        return config

    def processor_source(self, config: dict):
        return config.get("lm_from")

    def config_from_dict(self, data: dict) -> dict:
        return copy.deepcopy(data)

    def max_length(self, config: dict) -> int:
        return config["lm"]["max_position_embeddings"] - PREFIX

    def vocab_size(self, config: dict) -> int:
        return config["lm"]["vocab_size"]

    def build(self, config: dict) -> FeatureLM:
        model = FeatureLM(config)
        if config.get("lm_from"):  # a composite: the language model's trained weights
            from transformers import AutoModelForCausalLM

            model.lm = AutoModelForCausalLM.from_pretrained(Path(config["lm_from"]) / "lm")
        return model

    def load(self, source: str) -> FeatureLM:
        from transformers import AutoModelForCausalLM

        model = FeatureLM(self.load_config(source))
        model.encoder.load_state_dict(load_file(Path(source) / "encoder.safetensors"))
        model.lm = AutoModelForCausalLM.from_pretrained(Path(source) / "lm")
        return model.train()

    def save(self, model, processor, out, processor_source=None):
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        model.lm.save_pretrained(out / "lm")
        save_file({k: v.contiguous() for k, v in model.encoder.state_dict().items()},
                  out / "encoder.safetensors")
        (out / "composite.json").write_text(json.dumps(model.config))
        self.save_processor(processor, out, processor_source)
        (out / "moxin.json").write_text(json.dumps({"family": self.name}))
        return out

    def load_processor(self, source) -> FeatureProcessor:
        source = Path(source)
        stats = (json.loads((source / "features.json").read_text())
                 if (source / "features.json").exists() else {})
        tokenizer_dir = source / "tokenizer" if (source / "tokenizer").is_dir() else source
        return FeatureProcessor(load_tokenizer(tokenizer_dir), **stats)

    def save_processor(self, processor, out, source=None) -> None:
        out = Path(out)
        processor.tokenizer.save_pretrained(out / "tokenizer")
        (out / "features.json").write_text(json.dumps({"mean": processor.mean,
                                                       "std": processor.std}))


class NumberFeatures(DataSource):
    """Records: 8 features that encode a number, and a sentence that names it."""

    name = "number-features"

    def __init__(self, num: int = 64) -> None:
        self.num = num

    def iter_from(self, position):
        for i in range(position or 0, self.num):
            rng = random.Random(f"number-features:{i}")
            n = rng.randrange(10)
            features = [float(n == k % 10) + rng.random() * 0.1 for k in range(FEATURES)]
            yield ({"features": features, "text": f"the number is {n}.",
                    "__origin__": f"number-features:{i}"}, i + 1)

    def fingerprint(self):
        return f"number-features-{self.num}"


class PrefixLM(Objective):
    """Next-token loss on the text, conditioned on the encoded features; counts its batches
    (objective state, checkpointed)."""

    name = "prefix-lm"

    class Builder:
        def __init__(self, processor, seq_len):
            self.processor, self.seq_len, self.fed = processor, seq_len, 0

        def feed(self, record):
            self.fed += 1
            ids = self.processor.tokenizer(record["text"])["input_ids"][: self.seq_len]
            return [{"features": self.processor.features(record["features"]), "input_ids": ids}]

        def state_dict(self):
            return {"stats": {"records": self.fed}}

        def load_state_dict(self, state):
            self.fed = state["stats"]["records"]

    def __init__(self) -> None:
        self.batches = 0

    def example_builder(self, processor, seq_len):
        return self.Builder(processor, seq_len)

    def collate(self, examples):
        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.zeros((len(examples), width), dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        for i, e in enumerate(examples):
            ids[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
            labels[i, : len(e["input_ids"])] = torch.tensor(e["input_ids"])
        return {"input_ids": ids, "labels": labels,
                "features": torch.tensor([e["features"] for e in examples])}

    def loss(self, model, batch):
        self.batches += 1
        out = model(batch["features"], batch["input_ids"], batch["labels"])
        return out.loss, {"batches": torch.tensor(float(self.batches))}

    def state_dict(self):
        return {"batches": self.batches}

    def load_state_dict(self, state):
        self.batches = state["batches"]


def _preset():
    return ModelPreset("feature-lm", {"lm": dict(
        vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
        sliding_window=128, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)})


def _hparams(**changes):
    base = dict(max_steps=6, micro_batch_size=4, seq_len=32, lr=3e-3, warmup_steps=1,
                precision="32-true", accelerator="cpu", checkpoint_every=2, log_every=1)
    base.update(changes)
    return HyperParameters(**base)


def _variant():
    data = [DataSpec("number-features", 1.0, {"num": 64})]
    return Variant("feature-demo", [
        Stage("warm", "prefix-lm", data, model="feature-nano", hparams=_hparams()),
        Stage("more", "prefix-lm", data, model="previous", hparams=_hparams(max_steps=4))])


def _composite_variant():
    data = [DataSpec("number-features", 1.0, {"num": 64})]
    return Variant("feature-composite", [
        Stage("built", "prefix-lm", data, model="feature-on-demo",
              hparams=_hparams(max_steps=2, lr=1e-12))])


class FeaturePlugin:
    @hookimpl
    def moxin_model_families(self):
        return {"feature-lm": FeatureLMFamily}

    @hookimpl
    def moxin_models(self):
        return {"feature-nano": _preset,
                "feature-on-demo": lambda: ModelPreset("feature-lm",
                                                       {"lm_from": "variant:feature-demo"})}

    @hookimpl
    def moxin_objectives(self):
        return {"prefix-lm": PrefixLM}

    @hookimpl
    def moxin_data_sources(self):
        return {"number-features": NumberFeatures}

    @hookimpl
    def moxin_variants(self):
        return {"feature-demo": _variant, "feature-composite": _composite_variant}


def _registry(*extra) -> Registry:
    pm = get_plugin_manager()
    info = pm.register_plugin(FeaturePlugin(), name="feature", distribution="moxin-plugin-feature")
    assert info.error is None, info.error
    for i, plugin in enumerate(extra):
        pm.register_plugin(plugin, name=f"extra-{i}", distribution="test")
    return Registry(pm)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, nano_tokenizer):
    out = tmp_path_factory.mktemp("feature")
    results = train_variant("feature-demo", out, sets=[f"warm.tokenizer={nano_tokenizer}"],
                            registry=_registry())
    return out, results


def test_the_family_trains_saves_and_continues_through_previous(trained):
    out, (warm, more) = trained
    assert (warm.steps, more.steps) == (6, 4)
    assert warm.last_loss < warm.first_loss and more.first_loss < warm.first_loss
    hf = out / "warm" / "hf"
    assert {"lm", "encoder.safetensors", "composite.json", "features.json", "tokenizer",
            "moxin.json"} <= {p.name for p in hf.iterdir()}
    assert json.loads((out / "warm" / "model.json").read_text())["family"] == "feature-lm"
    # the second stage started from the first one's folder, reloaded by its family
    config = (out / "more" / "config.yaml").read_text()
    assert str(hf) in config
    manifest = json.loads((out / "more" / "manifest.json").read_text())
    assert manifest["data"]["stats"] == {"records": 4 * 4}  # one example per record
    # the reloaded folder holds the trained weights
    family = FeatureLMFamily()
    model = family.load(str(hf))
    checkpoint = load_file(out / "warm" / "checkpoints" / "step=000006.ckpt" / "model.safetensors")
    for name, value in model.state_dict().items():
        assert torch.equal(value, checkpoint[f"model.{name}"]), name


def test_a_composite_preset_builds_on_another_variants_model(trained):
    out, _ = trained
    (result,) = train_variant("feature-composite", out, registry=_registry())
    source = out / "more" / "hf"
    config = yaml.safe_load((out / "built" / "config.yaml").read_text())
    # the reference resolved like a stage's model, the processor taken from it
    assert config["references"] == {"lm": str(source)}
    assert config["tokenizer"] == str(source)
    assert json.loads((out / "built" / "model.json").read_text())["config"]["lm_from"] == \
        str(source)
    # built from the referenced model's language model (lr 1e-12: still its weights, where a
    # randomly initialised one would differ by the weights' own size)
    built = load_file(out / "built" / "hf" / "lm" / "model.safetensors")
    for name, value in load_file(source / "lm" / "model.safetensors").items():
        torch.testing.assert_close(built[name], value, rtol=0, atol=1e-8)
    assert result.steps == 2


def test_a_stage_can_point_a_composite_reference_elsewhere(trained, tmp_path):
    out, _ = trained
    elsewhere = out / "warm" / "hf"  # not the variant's own choice (more/hf)
    (result,) = train_variant("feature-composite", tmp_path / "run",
                              sets=[f"built.references.lm={elsewhere}", "max_steps=1"],
                              registry=_registry())
    config = yaml.safe_load((tmp_path / "run" / "built" / "config.yaml").read_text())
    assert config["references"] == {"lm": str(elsewhere)} and result.steps == 1
    assert config["stage"]["references"] == {"lm": str(elsewhere)}
    # a role the preset does not have, and references on a model that is built already
    with pytest.raises(MoxinError, match=r"is built from lm; there is no reference vision to "
                                         r"set \(references.vision\)"):
        train_variant("feature-composite", tmp_path / "x", sets=["built.references.vision=a"],
                      registry=_registry())
    with pytest.raises(MoxinError, match=r"sets references \(lm\), but it starts from .*built "
                                         r"already"):
        train_variant("feature-composite", tmp_path / "y",
                      sets=[f"built.model={elsewhere}", f"built.references.lm={elsewhere}"],
                      registry=_registry())


def test_a_reference_to_a_variant_no_plugin_provides_says_what_to_do(tmp_path):
    with pytest.raises(MoxinError, match=r"starts from the final model of variant 'gone' "
                                         r"\(variant:gone\), which no installed plugin provides.*"
                                         r"built.references.ROLE\) at a model folder"):
        train_variant("feature-composite", tmp_path, sets=["built.references.lm=variant:gone"],
                      registry=_registry())


def test_export_writes_the_family_folder(trained, tmp_path):
    out, _ = trained
    registry = _registry()
    assert main(["export", str(out / "more"), "--format", "hf", "--out", str(tmp_path / "e")],
                registry) == 0
    assert (tmp_path / "e" / "composite.json").exists() and (tmp_path / "e" / "lm").is_dir()
    # an unfinished stage exports from its last checkpoint, built by the family
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    shutil.copy(out / "warm" / "model.json", unfinished / "model.json")
    shutil.copytree(out / "warm" / "tokenizer", unfinished / "tokenizer")
    shutil.copytree(out / "warm" / "checkpoints" / "step=000004.ckpt",
                    unfinished / "checkpoints" / "step=000004.ckpt")
    assert main(["export", str(unfinished), "--format", "hf", "--out", str(tmp_path / "u")],
                registry) == 0
    exported = FeatureLMFamily().load(str(tmp_path / "u"))
    checkpoint = load_file(unfinished / "checkpoints" / "step=000004.ckpt" / "model.safetensors")
    assert torch.equal(exported.encoder[0].weight, checkpoint["model.encoder.0.weight"])


class _StopAt(pl.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 3:
            raise KeyboardInterrupt


class _Interrupt:
    @hookimpl
    def moxin_callbacks(self, stage, out_dir):
        return [_StopAt()] if stage.name == "warm" else []


def test_the_family_resumes_exactly_with_its_objective_state(trained, tmp_path, nano_tokenizer):
    out, _ = trained
    sets = [f"warm.tokenizer={nano_tokenizer}"]
    with pytest.raises(MoxinError, match="interrupted at step 3"):
        train_variant("feature-demo", tmp_path, stage="warm", sets=sets,
                      registry=_registry(_Interrupt()))
    (result,) = train_variant("feature-demo", tmp_path, stage="warm", sets=sets, resume=True,
                              registry=_registry())
    assert result.steps == 6
    assert sha256_file(tmp_path / "warm" / "hf" / "lm" / "model.safetensors") == \
        sha256_file(out / "warm" / "hf" / "lm" / "model.safetensors")
    assert sha256_file(tmp_path / "warm" / "hf" / "encoder.safetensors") == \
        sha256_file(out / "warm" / "hf" / "encoder.safetensors")
    # the objective's counter came back from the checkpoint: 6 batches in all (not 4 = the 4
    # batches trained again after step 2)
    for folder in (out, tmp_path):
        with open(folder / "warm" / "metrics.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert [float(r["train/batches"]) for r in rows] == [1, 2, 3, 4, 5, 6]
