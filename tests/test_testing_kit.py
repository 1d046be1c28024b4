"""moxin_core.testing: its pytest fixtures (loaded through the pytest11 entry point, no conftest
needed) and contract checks that pass on the core's components and catch planted bugs."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import pytest
import torch

from moxin_core.data.sources import DataSource, EmbeddedCorpus, Files
from moxin_core.errors import MoxinError
from moxin_core.objectives.lm import CausalLM
from moxin_core.testing import (ContractError, check_data_source, check_evaluator,
                                check_exporter, check_objective, check_reward)


def test_the_fixtures_come_from_the_installed_pytest_plugin(request, moxin_tokenizer,
                                                            moxin_tiny_model, moxin_records):
    plugin = request.config.pluginmanager.get_plugin("moxin")
    assert plugin is not None and plugin.__name__ == "moxin_core.testing.plugin"
    a, b = moxin_tiny_model(), moxin_tiny_model()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values()))
    assert a.get_input_embeddings().num_embeddings >= len(moxin_tokenizer)
    records = moxin_records(5)
    assert len(records) == 5 and all(isinstance(r["text"], str) and r["text"] for r in records)


def test_moxin_register_adds_a_plugin_for_one_test(moxin_register, moxin_registry):
    from moxin_core import hookimpl

    class Plugin:
        @hookimpl
        def moxin_objectives(self):
            return {"probe-objective": CausalLM}

    assert moxin_register(Plugin()).get("objectives", "probe-objective") is CausalLM
    with pytest.raises(Exception, match="probe-objective"):
        moxin_registry.get("objectives", "probe-objective")


# -- data sources --------------------------------------------------------------------------------

def test_the_core_sources_keep_the_data_source_contracts(tmp_path):
    check_data_source(lambda: EmbeddedCorpus(seed=3, num_documents=200))
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(40)))
    check_data_source(lambda: Files(str(path)))


class _Shuffled(DataSource):
    """Planted bug: a fresh shuffle (unseeded) every time."""

    def iter_from(self, position):
        order = list(range(100))
        random.shuffle(order)
        for i, value in enumerate(order[position or 0:], start=position or 0):
            yield {"text": f"record {value}"}, i + 1

    def fingerprint(self):
        return "shuffled"


class _SkipsOnResume(DataSource):
    """Planted bug: resuming starts one record past the position."""

    def iter_from(self, position):
        start = (position + 1) if position else 0
        for i in range(start, 100):
            yield {"text": f"record {i}"}, i + 1

    def fingerprint(self):
        return "skips"


class _UnstableFingerprint(_SkipsOnResume):
    def iter_from(self, position):
        for i in range(position or 0, 100):
            yield {"text": f"record {i}"}, i + 1

    def fingerprint(self):
        return str(random.random())


@pytest.mark.parametrize("source,contract", [(_Shuffled, "deterministic"),
                                             (_SkipsOnResume, "resumable"),
                                             (_UnstableFingerprint, "fingerprint stable")])
def test_data_source_contracts_catch_planted_bugs(source, contract):
    with pytest.raises(ContractError, match=f"{source.__name__} breaks the contract "
                                            f"'{contract}'") as caught:
        check_data_source(source)
    assert caught.value.contract == contract
    if contract == "resumable":  # which record went missing
        assert "after record 0) should yield record 1 ({'text': 'record 1'}) next but " \
               "yielded {'text': 'record 2'}" in str(caught.value)


# -- objectives ----------------------------------------------------------------------------------

def test_the_lm_objective_keeps_the_objective_contracts(moxin_tokenizer, moxin_tiny_model,
                                                        moxin_records):
    check_objective(CausalLM, moxin_tiny_model, moxin_tokenizer, moxin_records(64))
    # with the logits computed 24 tokens at a time (recomputed in the backward pass)
    check_objective(lambda: CausalLM(logits_chunk=24), moxin_tiny_model, moxin_tokenizer,
                    moxin_records(64))


class _IgnoresLabelMask(CausalLM):
    """Planted bug: targets taken from input_ids, the label mask ignored."""

    def loss(self, model, batch):
        unmasked = {**batch, "labels": batch["input_ids"]}
        return super().loss(model, unmasked)


class _RemembersLastBatch(CausalLM):
    """Planted bug: the loss is divided by a running count of calls (state kept across
    micro-batches, as a running token count would be)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = 0

    def loss(self, model, batch):
        loss, metrics = super().loss(model, batch)
        self.calls += 1
        return loss / self.calls, metrics


@pytest.mark.parametrize("objective,contract", [
    (_IgnoresLabelMask, "label mask respected"),
    (_RemembersLastBatch, "gradient accumulation")])
def test_objective_contracts_catch_planted_bugs(objective, contract, moxin_tokenizer,
                                               moxin_tiny_model, moxin_records):
    with pytest.raises(ContractError, match=f"{objective.__name__} breaks the contract "
                                            f"'{contract}'"):
        check_objective(objective, moxin_tiny_model, moxin_tokenizer, moxin_records(64))


# -- exporters -----------------------------------------------------------------------------------

def test_the_hf_exporter_keeps_the_exporter_contracts(moxin_registry, moxin_model_folder,
                                                      tmp_path):
    out = check_exporter(moxin_registry.get("exporters", "hf"), moxin_model_folder,
                         tmp_path / "hf")
    assert (out / "model.safetensors").is_file() and (out / "moxin.json").is_file()
    # the stale files the force contract wrote over are gone: out is a fresh export again
    assert (out / "config.json").read_text().startswith("{")


def _copy_config(model_path, out, force=False, **options):
    """A correct toy exporter: the model's config.json, as one file."""
    if options:
        raise MoxinError(f"unknown option(s) {sorted(options)}")
    out = Path(out)
    if out.exists() and not force:
        raise MoxinError(f"{out} exists; pass force=True")
    out.write_bytes((Path(model_path) / "config.json").read_bytes())
    return out


def _overwrites(model_path, out, force=False, **options):
    """Planted bug: writes over an existing output without force."""
    return _copy_config(model_path, out, force=True, **options)


def _ignores_force(model_path, out, force=False, **options):
    """Planted bug: with force=True over an existing output, keeps what was there."""
    if force and Path(out).exists():
        return Path(out)
    return _copy_config(model_path, out, force, **options)


def _no_options(model_path, out, force=False):
    """Planted bug: an unknown option is a TypeError (a traceback for the user)."""
    return _copy_config(model_path, out, force)


def _timestamped(model_path, out, force=False, **options):
    """Planted bug: the output carries the time it was written."""
    out = _copy_config(model_path, out, force, **options)
    out.write_text(out.read_text() + f"\n{time.time_ns()}\n")
    return out


def _returns_text(model_path, out, force=False, **options):
    """Planted bug: returns a str, not the pathlib.Path it wrote."""
    return str(_copy_config(model_path, out, force, **options))


def test_a_correct_toy_exporter_passes(moxin_model_folder, tmp_path):
    # the control for the planted bugs below: each differs from it by its bug alone
    check_exporter(lambda: _copy_config, moxin_model_folder, tmp_path / "config.json")


@pytest.mark.parametrize("exporter,contract", [
    (_overwrites, "refuses to overwrite"), (_ignores_force, "force replaces"),
    (_no_options, "unknown options raise MoxinError"), (_timestamped, "deterministic"),
    (_returns_text, "writes out")])
def test_exporter_contracts_catch_planted_bugs(exporter, contract, moxin_model_folder, tmp_path):
    with pytest.raises(ContractError, match=f"{exporter.__name__} breaks the contract "
                                            f"'{contract}'") as caught:
        check_exporter(lambda: exporter, moxin_model_folder, tmp_path / "config.json")
    if contract == "unknown options raise MoxinError":
        assert "TypeError" in str(caught.value) and "no_such_option" in str(caught.value)


def test_the_hf_exporter_refuses_unknown_options_with_a_moxin_error(moxin_registry,
                                                                     moxin_model_folder,
                                                                     tmp_path):
    export = moxin_registry.get("exporters", "hf")()
    with pytest.raises(MoxinError, match="Exporter 'hf' does not take option\\(s\\) outtype"):
        export(moxin_model_folder, tmp_path / "hf", outtype="q8_0")
    assert not (tmp_path / "hf").exists()


# -- rewards -------------------------------------------------------------------------------------

PROMPTS = [[1, 2, 3]] * 3
COMPLETIONS = ["The answer is 12.", "I think it is 7", "no idea at all"]
FIELDS = {"answer": ["12", "8", "3"], "completion_ids": [[5] * 6, [5] * 5, [5] * 4]}


def _word_count(prompts, completions, **fields):
    """A correct toy reward: fewer words score higher."""
    return [1.0 / (1 + len(c.split())) for c in completions]


def _one_short(prompts, completions, **fields):
    """Planted bug: the last completion gets no reward."""
    return _word_count(prompts, completions)[:-1]


def _strips_in_place(prompts, completions, **fields):
    """Planted bug: cleans the completions in the caller's list."""
    for i, c in enumerate(completions):
        completions[i] = c.strip(".")
    return _word_count(prompts, completions)


def _noisy(prompts, completions, **fields):
    """Planted bug: a random tie-breaker."""
    return [r + random.random() * 1e-3 for r in _word_count(prompts, completions)]


def _last_character(prompts, completions, **fields):
    """Planted bug: reads the last character of each completion (an empty one raises)."""
    return [float(c[-1] == ".") for c in completions]


def _ratio(prompts, completions, **fields):
    """Planted bug: answer length over completion length (inf on empty completions)."""
    return [len(a) / len(c) if c else math.inf for a, c in zip(fields["answer"], completions)]


def _maybe(prompts, completions, **fields):
    """Planted bug: None where it cannot tell."""
    return [None if "idea" in c else 1.0 for c in completions]


def _as_tuple(prompts, completions, **fields):
    """Planted bug: a tuple, not a list."""
    return tuple(_word_count(prompts, completions))


def test_a_correct_toy_reward_passes():
    rewards = check_reward(lambda: _word_count, PROMPTS, COMPLETIONS, **FIELDS)
    assert rewards == [1 / 5, 1 / 6, 1 / 5]


@pytest.mark.parametrize("reward,contract", [
    (_one_short, "one reward per completion"), (_strips_in_place, "inputs unchanged"),
    (_noisy, "deterministic"), (_last_character, "handles empty completions"),
    (_ratio, "finite rewards"), (_maybe, "rewards are numbers"), (_as_tuple, "returns a list")])
def test_reward_contracts_catch_planted_bugs(reward, contract):
    with pytest.raises(ContractError, match=f"{reward.__name__} breaks the contract "
                                            f"'{contract}'") as caught:
        check_reward(lambda: reward, PROMPTS, COMPLETIONS, **FIELDS)
    if contract == "one reward per completion":
        assert "2 rewards for 3 completions" in str(caught.value)


# -- evaluators ----------------------------------------------------------------------------------

class _ConfigSize:
    """A correct toy evaluator: the model's hidden size, read from its config.json."""

    def __init__(self, scale: float = 1.0) -> None:
        if scale <= 0:
            raise MoxinError(f"scale must be positive, got {scale}")
        self.scale = scale

    def __call__(self, model_path: str) -> dict[str, float]:
        config = json.loads((Path(model_path) / "config.json").read_text())
        return {"hidden": self.scale * config["hidden_size"], "n": 1.0}


class _NaNScore(_ConfigSize):
    """Planted bug: a score of an empty set (0/0 as NaN)."""

    def __call__(self, model_path):
        return {**super().__call__(model_path), "accuracy": math.nan}


class _TensorScore(_ConfigSize):
    """Planted bug: a tensor score."""

    def __call__(self, model_path):
        return {"hidden": torch.tensor(super().__call__(model_path)["hidden"])}


class _TakesAnything(_ConfigSize):
    """Planted bug: a misspelled option (``scael: 2``) is swallowed."""

    def __init__(self, scale: float = 1.0, **ignored) -> None:
        super().__init__(scale)


class _Sampled(_ConfigSize):
    """Planted bug: an unseeded sample."""

    def __call__(self, model_path):
        return {**super().__call__(model_path), "sampled": random.random()}


class _Caches(_ConfigSize):
    """Planted bug: leaves a cache file in the model folder."""

    def __call__(self, model_path):
        (Path(model_path) / "eval-cache.json").write_text("{}")
        return super().__call__(model_path)


class _LoadsEarly(_ConfigSize):
    """Planted bug: does its slow work in the factory."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__(scale)
        time.sleep(0.3)


@pytest.fixture
def config_folder(moxin_model_folder, tmp_path) -> Path:
    """A copy of the model folder's config.json alone (the toy evaluators read nothing else)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_bytes((moxin_model_folder / "config.json").read_bytes())
    return folder


def test_a_correct_toy_evaluator_passes(config_folder):
    scores = check_evaluator(_ConfigSize, config_folder, {"scale": 2.0}, build_seconds=0.2)
    assert scores["hidden"] == 2.0 * json.loads((config_folder / "config.json").read_text())[
        "hidden_size"]


@pytest.mark.parametrize("evaluator,contract", [
    (_NaNScore, "finite scores"), (_TensorScore, "scores are named numbers"),
    (_TakesAnything, "rejects unknown options"), (_Sampled, "deterministic"),
    (_Caches, "leaves the model alone"), (_LoadsEarly, "cheap to build")])
def test_evaluator_contracts_catch_planted_bugs(evaluator, contract, config_folder):
    with pytest.raises(ContractError, match=f"{evaluator.__name__} breaks the contract "
                                            f"'{contract}'"):
        check_evaluator(evaluator, config_folder, {"scale": 2.0}, build_seconds=0.2)


def test_an_evaluator_that_takes_a_reference_receives_it(config_folder, tmp_path):
    seen = []

    def factory():
        def evaluate(model_path, reference=None):
            seen.append(reference)
            return {"same": float(Path(model_path) == Path(reference))}
        return evaluate

    assert check_evaluator(factory, config_folder) == {"same": 1.0}
    other = tmp_path / "other"
    other.mkdir()
    assert check_evaluator(factory, config_folder, reference=other) == {"same": 0.0}
    assert seen == [str(config_folder)] * 2 + [str(other)] * 2


def test_data_sources_must_name_the_file_and_line_of_bad_input(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": "fine"\n')
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": f"record {i}"}) + "\n" for i in range(30)))
    # the core's files source names them
    check_data_source(lambda: Files(str(good)), broken=lambda: Files(str(broken)),
                      broken_at="broken.jsonl:2")

    class RawJson(DataSource):
        """Planted bug: a bad line surfaces as json's own error, naming no file."""

        def __init__(self, path):
            self.path = path

        def fingerprint(self):
            return self.path

        def iter_from(self, position):
            for line in Path(self.path).read_text().splitlines():
                yield json.loads(line), None

    with pytest.raises(ContractError, match="'errors name file and line'.*JSONDecodeError"):
        check_data_source(lambda: Files(str(good)), broken=lambda: RawJson(str(broken)),
                          broken_at="broken.jsonl:2")

    class Vague(RawJson):
        """Planted bug: a MoxinError that does not say where."""

        def iter_from(self, position):
            raise MoxinError("a record is malformed")
            yield

    with pytest.raises(ContractError, match="does not say 'broken.jsonl:2'"):
        check_data_source(lambda: Files(str(good)), broken=lambda: Vague(str(broken)),
                          broken_at="broken.jsonl:2")


def test_the_datamodule_fixture_builds_what_moxin_train_builds(moxin_datamodule, tmp_path):
    module = moxin_datamodule(CausalLM(), seq_len=32, micro_batch_size=3)
    batch = next(module.iter_batches())  # the first batch training would see
    assert batch["input_ids"].shape == (3, 32) and batch["labels"].shape == (3, 32)
    again = next(moxin_datamodule(CausalLM(), seq_len=32, micro_batch_size=3).iter_batches())
    assert torch.equal(batch["input_ids"], again["input_ids"])  # seeded: the same stream
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"body": f"line {i} " * 8}) + "\n" for i in range(50)))
    files = moxin_datamodule(CausalLM(), [{"source": "files", "paths": str(data),
                                           "text_field": "body"}], seq_len=16)
    assert next(files.iter_batches())["input_ids"].shape == (2, 16)
    with pytest.raises(MoxinError, match="d.jsonl:1: no field 'text'"):  # checked up front
        moxin_datamodule(CausalLM(), [{"source": "files", "paths": str(data)}])
