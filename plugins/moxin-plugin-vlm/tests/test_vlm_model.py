"""The VLM: patches after BOS, masks and labels, mixed batches, frozen parts per stage, saving
and reloading in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from moxin_core.api import IGNORE_INDEX
from moxin_plugin_vlm.objective import VisionLanguageSFT

from vlm_models import tiny_vlm


def _batch(processor, rows=2):
    objective = VisionLanguageSFT()
    builder = objective.example_builder(processor, 64)
    records = [{"image": Image.new("RGB", (32, 32), (200, 20, 20)),
                "conversations": [{"from": "human", "value": "<image>\nWhat colour is it?"},
                                  {"from": "gpt", "value": "red"}]},
               {"conversations": [{"from": "human", "value": "Say hi."},
                                  {"from": "gpt", "value": "hi there"}]}][:rows]
    return objective, objective.collate([e for r in records for e in builder.feed(r)])


def test_patches_go_after_bos_and_carry_no_loss(lm_folder):
    model, processor, _ = tiny_vlm(lm_folder)
    model.eval()
    _, batch = _batch(processor)
    embeds, mask, labels = model.merge(batch["input_ids"], batch["attention_mask"],
                                       batch["labels"], batch["pixel_values"], batch["has_image"])
    P, L = model.num_patches, batch["input_ids"].shape[1]
    text = model.language_model.get_input_embeddings()(batch["input_ids"])
    images = model.image_embeddings(batch["pixel_values"])
    assert embeds.shape[1] == L + P
    # image row: BOS, P patches, then the text
    torch.testing.assert_close(embeds[0, 0], text[0, 0])
    torch.testing.assert_close(embeds[0, 1:1 + P], images[0])
    torch.testing.assert_close(embeds[0, 1 + P:], text[0, 1:])
    assert (labels[0, 1:1 + P] == IGNORE_INDEX).all() and mask[0, :1 + P].all()
    assert torch.equal(labels[0, 1 + P:], batch["labels"][0, 1:])
    # text row: the text as it is, then P masked slots without loss
    torch.testing.assert_close(embeds[1, :L], text[1])
    assert not mask[1, L:].any() and (labels[1, L:] == IGNORE_INDEX).all()
    assert torch.equal(mask[1, :L], batch["attention_mask"][1])


def test_a_text_row_in_a_mixed_batch_computes_what_the_language_model_alone_does(lm_folder):
    model, processor, _ = tiny_vlm(lm_folder)
    model.eval()
    _, batch = _batch(processor)
    with torch.no_grad():
        mixed = model(**batch).logits[1]
        n = int(batch["attention_mask"][1].sum())
        alone = model.language_model(input_ids=batch["input_ids"][1:, :n]).logits[0]
    torch.testing.assert_close(mixed[:n], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("trainable,trained", [("align", {"projector"}),
                                               ("finetune", {"projector", "language_model"}),
                                               ("full-finetune",
                                                {"projector", "language_model", "vision"})])
def test_frozen_parts_are_bit_identical_after_a_step(lm_folder, trainable, trained):
    model, processor, _ = tiny_vlm(lm_folder)
    objective, batch = _batch(processor)
    objective = VisionLanguageSFT(trainable=trainable)
    objective.setup(SimpleNamespace(model=model))
    objective.prepare_model(model)  # what MoxinModule.configure_model calls
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss, _ = objective.loss(model, batch)
    loss.backward()
    optimizer.step()
    for part in ("vision", "projector", "language_model"):
        keys = [k for k in before if k.startswith(part + ".")]
        changed = [k for k in keys if not torch.equal(before[k], model.state_dict()[k])]
        if part in trained:
            assert changed, f"{part} did not train under {trainable}"
        else:
            assert not changed, f"{part} changed under {trainable}: {changed[:3]}"


def test_saved_vlm_reloads_in_a_fresh_process_and_its_lm_is_a_plain_hf_folder(lm_folder,
                                                                             tmp_path):
    model, processor, family = tiny_vlm(lm_folder)
    model.eval()
    _, batch = _batch(processor, rows=1)
    with torch.no_grad():
        expected = model(**batch).logits
    out = family.save(model, processor, tmp_path / "vlm")
    torch.save(batch, tmp_path / "batch.pt")
    script = (
        "import sys, torch\n"
        "from moxin_core.api import load_model\n"
        "model, processor, family = load_model(sys.argv[1])\n"
        "batch = torch.load(sys.argv[2])\n"
        "with torch.no_grad(): torch.save(model(**batch).logits, sys.argv[3])\n"
        "print(family.name, processor.transform.size)\n")
    done = subprocess.run([sys.executable, "-c", script, str(out), str(tmp_path / "batch.pt"),
                           str(tmp_path / "logits.pt")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["vlm", "32"]
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected)
    saved = json.loads((out / "vlm.json").read_text())
    assert "llm" not in saved and saved["projector"] == "gelu-mlp"
    # lm/ is a transformers folder with the tokenizer: no moxin needed to load it
    plain = ("import sys; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
             "m = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
             "t = AutoTokenizer.from_pretrained(sys.argv[1])\n"
             "print(type(m).__name__, t.chat_template is not None)\n")
    done = subprocess.run([sys.executable, "-c", plain, str(out / "lm")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["MistralForCausalLM", "True"]


def test_pad_token_added_and_embedding_rows_padded_to_a_multiple_of_64(lm_folder, tmp_path):
    from moxin_core.tokenizer import load_tokenizer

    original = load_tokenizer(lm_folder)
    assert original.pad_token is None
    model, processor, family = tiny_vlm(lm_folder)
    tok = processor.tokenizer
    assert tok.pad_token == "<PAD>" and len(tok) == len(original) + 1
    rows = model.language_model.get_input_embeddings().weight.shape[0]
    assert rows % 64 == 0 and rows >= len(tok) and rows - 64 < len(tok)
    assert model.language_model.get_output_embeddings().weight.shape[0] == rows
    # batches pad with <PAD>; the saved folder keeps the token and the padded rows
    _, batch = _batch(processor)
    assert batch["input_ids"][1, -1].item() == tok.pad_token_id
    out = family.save(model, processor, tmp_path / "vlm")
    reloaded = family.load_processor(out).tokenizer
    assert reloaded.pad_token == "<PAD>" and reloaded.pad_token_id == tok.pad_token_id
    assert json.loads((out / "vlm.json").read_text())["lm"]["vocab_size"] == rows


def test_a_saved_vlm_needs_no_weight_files_or_hub_to_reload(lm_folder, tmp_path):
    model, processor, family = tiny_vlm(lm_folder)
    # trained from files (or the hub) that the machine reloading it does not have
    model.config["encoder"]["options"].update(weights=str(tmp_path / "gone.safetensors"),
                                              pretrained=True)
    out = family.save(model, processor, tmp_path / "vlm")
    saved = json.loads((out / "vlm.json").read_text())["encoder"]["options"]
    assert "weights" not in saved and "pretrained" not in saved
    reloaded = family.load(str(out))
    for name, value in model.vision.state_dict().items():
        assert torch.equal(reloaded.vision.state_dict()[name], value)


def test_presets_are_listed_before_their_language_model_exists(capsys):
    from moxin_core.commands.listing import list_models, print_models
    from moxin_core.plugins import Registry

    entries = {e["name"]: e for e in list_models(Registry())}
    tiny = entries["moxin-tiny-vlm"]
    assert tiny["family"] == "vlm" and tiny["parameters"] is None
    assert tiny["parts"]["vision"] > 0 and tiny["language_model"] == "variant:moxin-tiny-instruct"
    assert entries["moxin-vlm"]["parts"]["vision"] > 700_000_000  # DINOv2-L + SigLIP so400m
    print_models(list(entries.values()))
    assert "moxin-tiny-vlm" in capsys.readouterr().out


def test_a_sharded_start_inherits_what_the_eager_build_inherits(lm_folder, tmp_path):
    """start_state_dict (loaded over random weights when FSDP builds on the meta device) holds
    what build() takes from elsewhere: the language model's weights with its padding rows, and
    the encoder's weights file; the projector alone starts random."""
    from safetensors.torch import save_file

    from moxin_plugin_vlm.family import VLMFamily
    from moxin_plugin_vlm.model import build_encoder

    weights = tmp_path / "vit.safetensors"
    save_file(build_encoder({"name": "tiny-vit"}).vit.state_dict(), str(weights))
    family = VLMFamily()
    preset = {"encoder": {"name": "tiny-vit", "options": {"weights": str(weights)}},
              "projector": "gelu-mlp", "llm": str(lm_folder), "pad_token": "<PAD>",
              "pad_to_multiple_of": 64}
    config = family.bind_references(preset, {"llm": str(lm_folder)})
    config = family.fit_config(config, family.fit_processor(family.load_processor(lm_folder),
                                                            config))
    state = family.start_state_dict(config)
    eager = family.build(config).state_dict()
    assert set(state) == {k for k in eager if not k.startswith("projector.")}
    vit = {f"vision.vit.{k}": v for k, v in load_file(weights).items()}
    assert vit and set(vit) <= set(state)
    for key, value in state.items():
        assert value.shape == eager[key].shape, key
        if key in vit:  # the file's weights, here and in the eager build
            assert torch.equal(value, vit[key]) and torch.equal(eager[key], vit[key])
    source = load_file(lm_folder / "model.safetensors")
    embed = state["language_model.model.embed_tokens.weight"]
    rows = source["model.embed_tokens.weight"].shape[0]
    assert embed.shape[0] % 64 == 0 and embed.shape[0] > rows
    assert torch.equal(embed[:rows], source["model.embed_tokens.weight"])
    assert 0 < embed[rows:].std() < 0.1  # new rows drawn small, as transformers draws them
    with torch.device("meta"):  # the sharded build: structure only, nothing read
        empty = family.build({**config, "encoder": {"name": "tiny-vit", "options": {
            "weights": str(tmp_path / "absent.safetensors")}}})
    assert all(p.is_meta for p in empty.parameters())
