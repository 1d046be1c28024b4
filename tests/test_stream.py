"""The sharded batch stream: exact resume after any batch, disjoint ranks and workers, the same
global batches whatever the world size, and datasets streams resumed without re-reading."""

from __future__ import annotations

import json
import sys
from itertools import islice
from pathlib import Path

import pytest
import torch

from moxin_core.data.datamodule import MoxinDataModule
from moxin_core.data.sources import EmbeddedCorpus, Files, HFDataset, Mixture, WeightedSource
from moxin_core.data.stream import BatchStream, Layout
from moxin_core.errors import MoxinError
from moxin_core.objectives.base import Objective
from moxin_core.objectives.lm import CausalLM
from moxin_core.tokenizer import load_tokenizer


class RecordIds(Objective):
    """An objective whose examples are the records' origins: which record went where."""

    class Builder:
        def __init__(self) -> None:
            self.fed = 0

        def feed(self, record: dict) -> list[dict]:
            self.fed += 1
            return [{"origin": record["__origin__"]}]

        def state_dict(self) -> dict:
            return {"stats": {"records": self.fed}}

        def load_state_dict(self, state: dict) -> None:
            self.fed = state["stats"]["records"]

    def example_builder(self, processor, seq_len):
        return self.Builder()

    def collate(self, examples):
        return {"origins": [e["origin"] for e in examples]}

    def loss(self, model, batch):
        raise NotImplementedError("not trained")


def _mixture() -> Mixture:
    return Mixture([WeightedSource(EmbeddedCorpus(seed=0, num_documents=40), 2.0),
                    WeightedSource(EmbeddedCorpus(seed=5, num_documents=9), 1.0)], seed=0)


def _lm_stream(tokenizer, micro_batch_size=4, layout=Layout(), start=None, first=0):
    objective = CausalLM()
    return BatchStream(_mixture(), lambda: objective.example_builder(tokenizer, 16),
                       objective.collate, micro_batch_size, layout, start, first)


def _ids_stream(micro_batch_size=2, layout=Layout(), mixture=None):
    objective = RecordIds()
    return BatchStream(mixture or _mixture(), lambda: objective.example_builder(None, 0),
                       objective.collate, micro_batch_size, layout)


@pytest.fixture(scope="module")
def tokenizer(nano_tokenizer):
    return load_tokenizer(nano_tokenizer)


@pytest.mark.parametrize("cut", [0, 5, 37])
def test_stream_resumes_right_after_any_batch(tokenizer, cut):
    items = list(islice(_lm_stream(tokenizer).iter_stream(0), 60))
    resumed = _lm_stream(tokenizer, start={0: items[cut]["state"]})
    for expected, again in zip(items[cut + 1:], resumed.iter_stream(0)):
        assert torch.equal(expected["batch"]["input_ids"], again["batch"]["input_ids"])


@pytest.mark.parametrize("cut", [0, 1, 2, 7])
def test_repeated_batches_resume_between_repeats(tokenizer, cut):
    # an objective's batch_repeats (GRPO's mu updates per rollout): each batch k times in a row,
    # and a stream resumed after any repeat continues with the remaining ones
    once = [b["batch"]["input_ids"] for b in islice(_lm_stream(tokenizer).iter_stream(0), 6)]
    objective = CausalLM()

    def stream(start=None):
        return BatchStream(_mixture(), lambda: objective.example_builder(tokenizer, 16),
                           objective.collate, 4, Layout(), start, repeats=3)

    items = list(islice(stream().iter_stream(0), 18))
    assert all(torch.equal(items[i]["batch"]["input_ids"], once[i // 3]) for i in range(18))
    resumed = stream({0: items[cut]["state"]})
    for expected, again in zip(items[cut + 1:], resumed.iter_stream(0)):
        assert torch.equal(expected["batch"]["input_ids"], again["batch"]["input_ids"])
    with pytest.raises(MoxinError, match="repeats"):
        BatchStream(_mixture(), lambda: None, objective.collate, 4, repeats=0)


def test_two_ranks_with_batch_b_see_the_batches_of_one_rank_with_2b(tokenizer):
    """``examples`` sharding: step s of 2 ranks x b = step s of 1 rank x 2b, rank 0 first."""
    single = islice(_lm_stream(tokenizer, 8).iter_stream(0), 20)
    ranks = [_lm_stream(tokenizer, 4, Layout(rank, 2)).iter_stream(0) for rank in (0, 1)]
    for whole, first, second in zip(single, *ranks):
        joined = torch.cat([first["batch"]["input_ids"], second["batch"]["input_ids"]])
        assert torch.equal(whole["batch"]["input_ids"], joined)


@pytest.mark.parametrize("sharding", ["examples", "records"])
def test_ranks_and_workers_read_disjoint_records_covering_the_source(sharding):
    source = EmbeddedCorpus(seed=3, num_documents=48)
    mixture = Mixture([WeightedSource(source, 1.0)], seed=0)
    seen = []
    for rank in range(2):
        layout = Layout(rank, 2, workers=3, sharding=sharding)
        stream = _ids_stream(2, layout, mixture)
        for stream_id in range(3):
            # one pass over the 48 documents: 48 / (2 ranks x 3 workers x 2) = 4 batches each
            for item in islice(stream.iter_stream(stream_id), 4):
                seen += item["batch"]["origins"]
    assert len(seen) == 48 and len(set(seen)) == 48  # each document once


def test_workers_deliver_the_single_stream_order_and_a_real_loader_agrees(tokenizer):
    single = [b["batch"]["input_ids"] for b in islice(_lm_stream(tokenizer).iter_stream(0), 12)]
    streams = _lm_stream(tokenizer, layout=Layout(workers=2))
    in_order = [b["batch"]["input_ids"] for b in islice(streams.in_loader_order(), 12)]
    assert all(torch.equal(a, b) for a, b in zip(single, in_order))
    loader = torch.utils.data.DataLoader(streams, batch_size=None, num_workers=2,
                                         collate_fn=lambda item: item)
    loaded = [b["batch"]["input_ids"] for b in islice(iter(loader), 12)]
    assert all(torch.equal(a, b) for a, b in zip(single, loaded))


@pytest.mark.parametrize("workers, cut", [(0, 7), (2, 4), (2, 5)])
def test_datamodule_resumes_exactly_with_loader_workers(tokenizer, workers, cut):
    def datamodule():
        return MoxinDataModule(_mixture(), CausalLM(), tokenizer, 16, 4, workers=workers)

    def batches(dm, n):
        loader = iter(dm.train_dataloader())
        return [dm.on_before_batch_transfer(next(loader), 0)["input_ids"] for _ in range(n)]

    full = batches(datamodule(), 14)
    first = datamodule()
    batches(first, cut)  # trained on `cut` batches (the loader may have fetched more)
    state = first.state_dict()
    resumed = datamodule()
    resumed.load_state_dict(state)
    again = batches(resumed, 14 - cut)
    assert all(torch.equal(a, b) for a, b in zip(full[cut:], again))


def test_resume_with_other_world_settings_is_a_clear_error(tokenizer):
    dm = MoxinDataModule(_mixture(), CausalLM(), tokenizer, 16, 4)
    state = dm.state_dict()
    other = MoxinDataModule(_mixture(), CausalLM(), tokenizer, 16, 2)
    with pytest.raises(MoxinError, match="micro-batch size 4.*this run has 1, 1, 'examples' and 2"):
        other.load_state_dict(state)


def test_builder_stats_come_from_the_stream_state(tokenizer):
    dm = MoxinDataModule(_mixture(), CausalLM(), tokenizer, 16, 4)
    loader = iter(dm.train_dataloader())
    for _ in range(5):
        dm.on_before_batch_transfer(next(loader), 0)
    stats = dm.stats()
    assert stats["tokens_out"] >= 5 * 4 * 16 and stats["tokens_in"] >= stats["tokens_out"]


def test_embedded_parts_are_generated_directly_and_strided_parts_skip():
    whole = [r["id"] for r, _ in EmbeddedCorpus(seed=1, num_documents=10).iter_from(None)]
    part = EmbeddedCorpus(seed=1, num_documents=10).shard(1, 3)
    assert [r["id"] for r, _ in part.iter_from(None)] == whole[1::3]
    records = list(part.iter_from(None))
    _, after_first = records[0]
    assert [r["id"] for r, _ in part.iter_from(after_first)] == whole[4::3]


def test_files_parts_stride_and_resume(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n"
                                              for i in range(7)))
    part = Files(str(tmp_path / "a.jsonl")).shard(0, 2)
    records = list(part.iter_from(None))
    assert [r["text"] for r, _ in records] == ["doc 0", "doc 2", "doc 4", "doc 6"]
    assert [r["text"] for r, _ in part.iter_from(records[1][1])] == ["doc 4", "doc 6"]


@pytest.fixture
def jsonl_dataset(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    for f in range(4):
        (folder / f"part-{f}.jsonl").write_text("".join(
            json.dumps({"text": f"file {f} row {i}"}) + "\n" for i in range(5)))
    return folder


def _hf(folder):
    files = sorted(str(p) for p in folder.glob("*.jsonl"))
    return HFDataset("json", data_files={"train": files})


_OPENED: list[str] | None = None


def _record_opens(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], str):
        _OPENED.append(Path(args[0]).name)


def test_hf_dataset_resumes_from_its_own_state_without_rereading(jsonl_dataset):
    global _OPENED
    records = list(_hf(jsonl_dataset).iter_from(None))
    texts = [r["text"] for r, _ in records]
    assert len(texts) == 20
    position = records[12][1]  # in the third file
    resumed_source = _hf(jsonl_dataset)
    resumed_source._load()  # load_dataset itself reads the first file (feature inference)
    sys.addaudithook(_record_opens)
    _OPENED = []
    try:
        resumed = [r["text"] for r, _ in resumed_source.iter_from(position)]
        opened = [name for name in _OPENED if name.startswith("part-")]
    finally:
        _OPENED = None
    assert resumed == texts[13:]
    # the files consumed before the current one are not read again (datasets reopens the one
    # just before at its end, to count from there)
    assert "part-0.jsonl" not in opened and "part-2.jsonl" in opened, opened
    assert records[12][0]["__origin__"].endswith(":12")


def test_hf_dataset_parts_split_by_node(jsonl_dataset):
    parts = [[r["text"] for r, _ in _hf(jsonl_dataset).shard(i, 2).iter_from(None)]
             for i in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert len(parts[0]) + len(parts[1]) == 20


class SkipsEverything(RecordIds):
    """An objective whose builder skips every record (each too long for seq_len, say)."""

    class Builder(RecordIds.Builder):
        def feed(self, record: dict) -> list[dict]:
            self.fed += 1
            return []

        def state_dict(self) -> dict:
            return {"stats": {"skipped_too_long": self.fed}}


def test_a_stream_whose_records_all_give_no_example_stops_with_a_clear_error():
    # before, the stream read its endless mixture forever looking for a first batch
    objective = SkipsEverything()
    stream = BatchStream(_mixture(), lambda: objective.example_builder(None, 0),
                         objective.collate, 2, Layout())
    with pytest.raises(MoxinError, match=r"20,000 records in a row gave no training example "
                       r".*'skipped_too_long': 20000.*raise seq_len"):
        next(stream.iter_stream(0))
    # the up-front data check says so before a model is built, naming the source and seq_len
    module = MoxinDataModule(_mixture(), SkipsEverything(), None, 32, 2)
    with pytest.raises(MoxinError, match=r"Data source embedded.*gave no training example at "
                       r"seq_len 32"):
        module.check_data()


def test_a_source_whose_first_records_give_no_example_is_not_refused_early():
    # a packing builder fills its first block from several short records: the check reads on
    class FirstExampleLate(RecordIds):
        class Builder(RecordIds.Builder):
            def feed(self, record: dict) -> list[dict]:
                self.fed += 1
                return [{"origin": record["__origin__"]}] if self.fed > 500 else []

    MoxinDataModule(_mixture(), FirstExampleLate(), None, 32, 2).check_data()
