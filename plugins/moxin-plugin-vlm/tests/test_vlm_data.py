"""Image-text records: labels on replies only, the embedded shapes, LLaVA files, bad input."""

from __future__ import annotations

import itertools
import json

import pytest
from PIL import Image

from moxin_core.api import IGNORE_INDEX, MoxinError
from moxin_plugin_vlm.data import EmbeddedShapes, LLaVAFile
from moxin_plugin_vlm.objective import VisionLanguageSFT
from moxin_plugin_vlm.shapes import ANSWERS, iter_records, split_of

from vlm_models import tiny_vlm


@pytest.fixture(scope="module")
def processor(lm_folder):
    return tiny_vlm(lm_folder)[1]


def _feed(processor, record, fmt="chat"):
    return VisionLanguageSFT(prompt_format=fmt).example_builder(processor, 128).feed(record)[0]


def _labelled(processor, example):
    return processor.tokenizer.decode([t for t in example["labels"] if t != IGNORE_INDEX])


def test_a_template_without_generation_marks_is_a_clear_error(processor):
    import copy

    plain = copy.copy(processor)
    plain.tokenizer = copy.deepcopy(processor.tokenizer)
    # mentions add_generation_prompt, marks no assistant tokens
    plain.tokenizer.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                                     "{% if add_generation_prompt %}>{% endif %}")
    record = {"conversations": [{"from": "human", "value": "hi"},
                                {"from": "gpt", "value": "yo"}]}
    with pytest.raises(MoxinError, match="does not mark assistant replies"):
        VisionLanguageSFT().example_builder(plain, 64).feed(record)


def test_a_reply_beyond_seq_len_is_skipped_and_counted(processor):
    builder = VisionLanguageSFT().example_builder(processor, 12)
    record = {"conversations": [{"from": "human", "value": "a long question " * 10},
                                {"from": "gpt", "value": "yes"}]}
    assert builder.feed(record) == []
    assert builder.state_dict()["stats"]["skipped_no_reply"] == 1


def test_labels_are_the_replies_and_their_end_of_turn_only(processor):
    record = {"image": Image.new("RGB", (32, 32)), "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the shape?"},
        {"from": "gpt", "value": "red"},
        {"from": "human", "value": "And its shape?"}, {"from": "gpt", "value": "circle"}]}
    example = _feed(processor, record)
    tok = processor.tokenizer
    assert example["input_ids"][0] == tok.bos_token_id
    assert _labelled(processor, example) == "red<|endoftext|>circle<|endoftext|>"
    unlabelled = tok.decode([i for i, t in zip(example["input_ids"], example["labels"])
                             if t == IGNORE_INDEX], skip_special_tokens=False)
    assert "What colour is the shape?" in unlabelled and "<image>" not in unlabelled
    assert example["pixel_values"].shape == (3, 32, 32)
    # prismatic's plain format for a "pure" language model
    pure = _feed(processor, record, "pure")
    assert tok.decode(pure["input_ids"], skip_special_tokens=False).startswith(
        "<s> In: What colour is the shape?\nOut: red</s>") or \
        "In: What colour is the shape?\nOut: red" in tok.decode(pure["input_ids"])
    assert _labelled(processor, pure).replace(" ", "") == "red</s>circle</s>"


def test_embedded_shapes_are_deterministic_split_by_hash_and_answer_in_one_word():
    first = [r for r, _ in itertools.islice(EmbeddedShapes(num_examples=50).iter_from(None), 50)]
    again = [r for r, _ in itertools.islice(EmbeddedShapes(num_examples=50).iter_from(None), 50)]
    assert [r["image"].tobytes() for r in first] == [r["image"].tobytes() for r in again]
    assert [r["conversations"] for r in first] == [r["conversations"] for r in again]
    # resume from a position yields what follows it
    rows = list(itertools.islice(EmbeddedShapes(num_examples=50).iter_from(None), 10))
    after = [r for r, _ in itertools.islice(EmbeddedShapes(num_examples=50).iter_from(rows[4][1]),
                                            5)]
    assert [r["conversations"] for r in after] == [r["conversations"]
                                                   for r, _ in rows[5:10]]
    for r in first:
        kind, reply = r["type"], r["conversations"][1]["value"]
        assert kind == "caption" or reply in ANSWERS[kind]
    # a held-out picture is never a training picture, and held-out pictures cover all kinds
    heldout = [r for _, r in itertools.islice(iter_records(0, "heldout"), 200)]
    train = {r["image"].tobytes() for _, r in itertools.islice(iter_records(0, "train"), 3000)}
    assert not any(r["image"].tobytes() in train for r in heldout)
    assert {r["type"] for r in heldout} == {"colour", "shape", "count", "position", "caption"}
    assert all(split_of(r["image"]) == "heldout" for r in heldout)
    with pytest.raises(MoxinError, match="unknown question kinds"):
        EmbeddedShapes(kinds=["size"])
    # kinds that fit only some scenes (position: one shape) skip the others, never fall back
    only = [r for r, _ in itertools.islice(EmbeddedShapes(kinds=["position"]).iter_from(None),
                                           40)]
    assert {r["type"] for r in only} == {"position"}


def test_llava_files_and_bad_records_name_the_record(processor, tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    Image.new("RGBA", (20, 10), (0, 255, 0, 100)).save(root / "green.png")
    Image.new("L", (20, 10), 128).save(root / "grey.png")
    (root / "broken.png").write_bytes(b"not a png")
    good = {"image": "green.png", "conversations": [
        {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "green"}]}
    rows = [good, dict(good, image="grey.png"),
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
            dict(good, image="missing.png"), dict(good, image="broken.png"),
            dict(good, image="../outside.png"),
            {"conversations": good["conversations"]},
            dict(good, conversations=[{"from": "human", "value": "Colour?"},
                                      {"from": "gpt", "value": "green"}]),
            dict(good, conversations=[{"from": "gpt", "value": "hello"},
                                      {"from": "human", "value": "<image>\nColour?"},
                                      {"from": "gpt", "value": "green"}])]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    source = LLaVAFile(str(path), str(root))
    builder = VisionLanguageSFT().example_builder(processor, 128)
    records = source.iter_from(None)
    # RGBA and grayscale pictures are converted to RGB; a text-only record has no image
    for _ in range(3):
        record, _ = next(records)
        example = builder.feed(record)[0]
        assert (example["pixel_values"] is None) == (record["image"] is None)
    errors = {4: "image .*missing.png does not exist", 5: "broken.png cannot be read",
              6: "leaves the image root", 7: "has an <image> marker but the record no image",
              8: "needs exactly one <image> marker", 9: "turns must alternate human/gpt"}
    for line, message in errors.items():
        with pytest.raises(MoxinError, match=f"data.jsonl:{line}: .*{message}"):
            record, _ = next(records)
            builder.feed(record)
        records = source.iter_from(line)  # continue after the bad record
    with pytest.raises(MoxinError, match="does not exist"):
        LLaVAFile(str(tmp_path / "nope.json"))


def test_a_datasets_image_dataset_trains_through_the_core_hf_dataset_source(processor, tmp_path):
    """LLaVA-style rows with an `Image` column, read by `datasets` from a local folder: the
    pictures arrive decoded and the vlm objective takes them as they are."""
    import datasets

    from moxin_core.api import DataSpec, Registry, build_datamodule

    colours = {"red": (220, 30, 30), "blue": (40, 70, 220)}
    rows = [{"image": Image.new("RGB", (24, 24), colours[c]),
             "conversations": [{"from": "human", "value": "<image>\nWhat colour is it?"},
                               {"from": "gpt", "value": c}]} for c in ["red", "blue"] * 3]
    features = datasets.Features({"image": datasets.Image(), "conversations": [
        {"from": datasets.Value("string"), "value": datasets.Value("string")}]})
    folder = tmp_path / "pictures"
    folder.mkdir()
    datasets.Dataset.from_list(rows, features=features).to_parquet(folder / "train.parquet")
    objective = VisionLanguageSFT()
    datamodule = build_datamodule(Registry(), [DataSpec("hf_dataset", 1.0, {"path": str(folder)})],
                                  objective, processor, 64, 2)
    batch = next(iter(datamodule.iter_batches()))
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["has_image"].all()
    # the first picture is red: the red channel is high, the blue one low, after normalisation
    assert batch["pixel_values"][0, 0].mean() > 0.5 and batch["pixel_values"][0, 2].mean() < -0.5
    labelled = [t for t in batch["labels"][0].tolist() if t != IGNORE_INDEX]
    assert processor.tokenizer.decode(labelled) == "red<|endoftext|>"
