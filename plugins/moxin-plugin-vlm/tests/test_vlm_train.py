"""`moxin train moxin-tiny-vlm`: built from the instruct run's model, trained, evaluated, saved,
and resumed bit-identically after SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from moxin_core.api import load_model
from moxin_core.reporting import sha256_file
from moxin_core.testing import subprocess_env
from moxin_core.training.stage import train_variant

SETS = ["micro_batch_size=4", "log_every=1", "vlm.evaluators=[{name: heldout-shapes, num: 12}]"]


def _run_folder(tmp_path, lm_folder):
    """A run folder whose moxin-tiny-instruct result (its `dpo` stage) is the tiny LM."""
    out = tmp_path / "run"
    shutil.copytree(lm_folder, out / "dpo" / "hf")
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, lm_folder):
    out = _run_folder(tmp_path_factory.mktemp("vlm-train"), lm_folder)
    (result,) = train_variant("moxin-tiny-vlm", out, sets=[*SETS, "max_steps=3"])
    return out, result


def test_tiny_vlm_trains_from_the_instruct_run_and_reloads(trained):
    out, result = trained
    stage = out / "vlm"
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["status"] == "complete" and result.steps == 3
    config = yaml.safe_load((stage / "config.yaml").read_text())
    assert config["references"] == {"llm": str(out / "dpo" / "hf")}
    assert config["tokenizer"] == str(out / "dpo" / "hf")
    assert manifest["data"]["stats"]["images"] == 12
    scores = json.loads((stage / "eval.json").read_text())["heldout-shapes"]
    assert scores["n"] == 12 and 0.0 <= scores["accuracy"] <= 1.0 and scores["chance"] > 0.2
    # the variant also scores the untrained VLM (the demo's "before")
    start = json.loads((stage / "eval_start.json").read_text())["heldout-shapes"]
    assert result.start_evals == {"heldout-shapes": start} and start["n"] == 12
    assert start["chance"] == scores["chance"] and not (stage / "start-model").exists()
    model, processor, family = load_model(str(stage))
    assert family.name == "vlm" and processor.transform.size == 32
    assert (stage / "tokenizer" / "image.json").exists()
    assert sorted(p.name for p in (stage / "hf").iterdir()) == [
        "MOF.md", "image.json", "lm", "mof.json", "moxin.json", "projector.safetensors",
        "vision.safetensors", "vlm.json"]
    openness = {c["name"]: c["present"]
                for c in json.loads((stage / "hf" / "mof.json").read_text())["components"]}
    assert openness["Model architecture"] and openness["Model parameters (final)"]
    assert openness["Inference code"] and openness["Evaluation results"]


def test_generate_and_chat_with_an_image(trained, tmp_path, capsys):
    import torch
    from PIL import Image

    from moxin_core.cli import main
    from moxin_core.errors import MoxinError
    from moxin_core.runtime import chat, generate, load_runtime

    out, _ = trained
    picture = tmp_path / "red.png"
    Image.new("RGB", (50, 40), (220, 30, 30)).save(picture)
    engine = load_runtime(str(out / "vlm"))
    assert engine.name == "vlm" and engine.takes_images
    reply = generate(str(out / "vlm"), "What colour is the shape?", max_new_tokens=4, chat=True,
                     image=str(picture))
    # the same as the model asked directly: chat prompt, patches of this picture after BOS
    tok = engine.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "What colour is the shape?"}],
                                  add_generation_prompt=True, tokenize=True,
                                  return_dict=True)["input_ids"]
    pixels = engine.processor.image(Image.open(picture))[None]
    direct = engine.model.generate(torch.tensor([list(ids)]), pixel_values=pixels,
                                   max_new_tokens=4, do_sample=False,
                                   eos_token_id=[tok.eos_token_id, *engine_stops(tok)],
                                   pad_token_id=tok.eos_token_id)
    assert reply == tok.decode(direct[0], skip_special_tokens=True).strip()
    assert main(["generate", str(out / "vlm"), "--image", str(picture), "--prompt", "Colour?",
                 "--max-new-tokens", "3"]) == 0
    conversation = chat(str(out / "vlm"), ["What shape is it?", "And its colour?"],
                        max_new_tokens=3, image=str(picture), stdout=open(os.devnull, "w"))
    assert [m["role"] for m in conversation] == ["user", "assistant"] * 2
    with pytest.raises(MoxinError, match="no such file"):
        generate(str(out / "vlm"), "hi", image=str(tmp_path / "missing.png"))
    with pytest.raises(MoxinError, match="is a text model .*--image needs a vision-language"):
        generate(str(out / "dpo" / "hf"), "hi", max_new_tokens=2, image=str(picture))


def engine_stops(tokenizer):
    from moxin_core.api import reply_stop_ids

    return list(reply_stop_ids(tokenizer))


def test_text_model_stage_refuses_the_vlm_objective(tmp_path, lm_folder):
    from moxin_core.errors import MoxinError

    out = _run_folder(tmp_path, lm_folder)
    with pytest.raises(MoxinError, match="needs a vision-language model"):
        train_variant("moxin-tiny-vlm", out, sets=[*SETS, "max_steps=1",
                                                   f"vlm.model={out / 'dpo' / 'hf'}"])


def _command(out):
    sets = [*SETS, "max_steps=6", "checkpoint_every=3", "keep_checkpoints=3",
            "vlm.evaluators=[]"]
    return [sys.executable, "-m", "moxin_core.cli", "train", "moxin-tiny-vlm", "--out", str(out),
            *sum((["--set", s] for s in sets), [])]


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_is_bit_identical(tmp_path, lm_folder):
    full_out = _run_folder(tmp_path / "full", lm_folder)
    full = subprocess.run(_command(full_out), capture_output=True, text=True, env=subprocess_env(),
                          timeout=900)
    assert full.returncode == 0, full.stderr[-3000:]
    files = ("vision.safetensors", "projector.safetensors", "lm/model.safetensors")
    reference = [sha256_file(full_out / "vlm" / "hf" / f) for f in files]

    out = _run_folder(tmp_path / "killed", lm_folder)
    process = subprocess.Popen(_command(out), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=subprocess_env())
    marker = out / "vlm" / "checkpoints" / "step=000003.ckpt"
    deadline = time.time() + 600
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and marker.exists()
    assert not (out / "vlm" / "hf").exists()
    resumed = subprocess.run([*_command(out), "--resume"], capture_output=True, text=True,
                             env=subprocess_env(), timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [sha256_file(out / "vlm" / "hf" / f) for f in files] == reference
