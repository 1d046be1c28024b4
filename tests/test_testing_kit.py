"""moxin_core.testing: its pytest fixtures (loaded through the pytest11 entry point, no conftest
needed) and contract checks that pass on the core's components and catch planted bugs."""

from __future__ import annotations

import json
import random

import pytest
import torch

from moxin_core.data.sources import DataSource, EmbeddedCorpus, Files
from moxin_core.objectives.lm import CausalLM
from moxin_core.testing import ContractError, check_data_source, check_objective


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
