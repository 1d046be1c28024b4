"""The plugin's objectives and data sources against moxin_core.testing's contract checks (the
fixtures come from the core's pytest plugin)."""

from __future__ import annotations

from itertools import islice

import pytest

from moxin_core.testing import check_data_source, check_objective
from moxin_plugin_instruct.sft import SFT


@pytest.mark.parametrize("name", ["embedded_instructions", "embedded_preferences"])
def test_the_embedded_chat_sources_keep_the_data_source_contracts(name, moxin_registry):
    factory = moxin_registry.get("data_sources", name)
    check_data_source(lambda: factory(num_examples=300))


@pytest.mark.parametrize("options", [{"reduction": "sum"}, {"reduction": "mean", "pack": False}])
def test_sft_keeps_the_objective_contracts(options, moxin_registry, moxin_tokenizer,
                                           moxin_tiny_model):
    source = moxin_registry.get("data_sources", "embedded_instructions")(num_examples=200)
    records = [r for r, _ in islice(source.iter_from(None), 64)]
    check_objective(lambda: SFT(**options), moxin_tiny_model, moxin_tokenizer, records,
                    seq_len=128)
