"""`moxin train` end to end at nano scale: outputs, export, determinism, resume, hooks, bad input."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import yaml

from moxin_core import hookimpl
from moxin_core.errors import MoxinError
from moxin_core.plugins import Registry, get_plugin_manager
from moxin_core.reporting import sha256_file
from moxin_core.training.stage import train_variant
from tests.conftest import (NANO_SETS, assert_clean_error, checkpoint_logits,
                            hf_logits_without_moxin, run_cli)

STAGE = "pretrain-128"


def nano_run(out: Path, tokenizer: Path, registry, *extra: str, steps: int = 6, **kwargs):
    return train_variant("moxin-tiny-base", out, stage=STAGE, max_steps=steps,
                         sets=[*NANO_SETS, f"tokenizer={tokenizer}", *extra], registry=registry,
                         **kwargs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, nano_tokenizer):
    out = tmp_path_factory.mktemp("run")
    results = nano_run(out, nano_tokenizer, Registry())
    return out, results


def test_stage_folder_holds_everything(finished):
    out, results = finished
    stage = out / STAGE
    assert results[0].steps == 6 and results[0].tokens == 6 * 4 * 64
    for name in ("config.yaml", "manifest.json", "metrics.csv", "loss.png", "model.json"):
        assert (stage / name).is_file(), name
    assert (stage / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = yaml.safe_load((stage / "config.yaml").read_text())
    assert config["stage"]["hparams"]["seq_len"] == 64 and config["init"] == "moxin-nano"
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["seed"] == 0 and manifest["steps"] == 6
    for package in ("torch", "lightning", "transformers"):
        assert manifest["versions"][package] == metadata.version(package), package
    assert manifest["world_size"] == 1 and manifest["tokens"] == 6 * 4 * 64
    assert json.loads((stage / "model.json").read_text())["family"] == "causal-lm"
    assert manifest["checkpoint_sha256"] == sha256_file(stage / "hf" / "model.safetensors")
    assert len(manifest["data"]["fingerprint"]) == 16
    # tokens still waiting in the packer buffer count as not packed yet (a 6-step run)
    assert 0.9 < manifest["data"]["packing_efficiency"] <= 1.0
    assert any(p["distribution"] == "moxin-core" for p in manifest["plugins"])
    rows = (stage / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and "train/loss" in rows[0] and len(rows) == 7
    checkpoints = sorted(p.name for p in (stage / "checkpoints").iterdir())
    assert checkpoints == ["step=000004.ckpt", "step=000006.ckpt"]  # keep_checkpoints=2
    assert (stage / "checkpoints" / "step=000006.ckpt" / "model.safetensors").is_file()
    assert (stage / "tensorboard").is_dir()


def test_hf_export_loads_without_moxin_and_matches_trained_weights(finished):
    out, _ = finished
    stage = out / STAGE
    hf = stage / "hf"
    assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer.json",
            "tokenizer_config.json", "generation_config.json", "chat_template.jinja"} <= \
        {p.name for p in hf.iterdir()}
    loaded = hf_logits_without_moxin(hf, "Question: Tom has 3 apples.")
    assert loaded["chat"] == "<s><|user|>\nhi\n"
    logits = checkpoint_logits(stage, loaded["ids"])
    torch.testing.assert_close(torch.tensor(loaded["logits"]), logits, atol=1e-6, rtol=0)


def test_same_seed_gives_identical_weights_other_seed_does_not(tmp_path, nano_tokenizer, finished):
    reference = sha256_file(finished[0] / STAGE / "hf" / "model.safetensors")
    nano_run(tmp_path / "again", nano_tokenizer, Registry())
    assert sha256_file(tmp_path / "again" / STAGE / "hf" / "model.safetensors") == reference
    nano_run(tmp_path / "seed1", nano_tokenizer, Registry(), "seed=1")
    assert sha256_file(tmp_path / "seed1" / STAGE / "hf" / "model.safetensors") != reference


def test_existing_run_is_never_overwritten_and_resume_skips_done_stage(finished, nano_tokenizer):
    out, _ = finished
    with pytest.raises(MoxinError, match="already holds a run.*--resume"):
        nano_run(out, nano_tokenizer, Registry())
    results = nano_run(out, nano_tokenizer, Registry(), resume=True)
    assert results[0].skipped
    with pytest.raises(MoxinError, match="settings differ.*lr"):
        nano_run(out, nano_tokenizer, Registry(), "lr=0.5", resume=True)


def test_stages_chain_and_change_context_length(tmp_path, nano_tokenizer):
    results = train_variant(
        "moxin-tiny-base", tmp_path, max_steps=8, registry=Registry(),
        sets=[*NANO_SETS, f"pretrain-128.tokenizer={nano_tokenizer}", "pretrain-128.seq_len=32",
              "pretrain-256.seq_len=64", "enhance.seq_len=64", "lr=3e-3"])
    assert [r.name for r in results] == ["pretrain-128", "pretrain-256", "enhance"]
    config = yaml.safe_load((tmp_path / "pretrain-256" / "config.yaml").read_text())
    assert config["init"] == str(tmp_path / "pretrain-128" / "hf")
    assert config["stage"]["hparams"]["seq_len"] == 64
    # the second stage starts from the first stage's weights, not from scratch
    assert results[1].first_loss < results[0].first_loss - 0.3


def test_gradient_accumulation_and_bf16_mixed(tmp_path, nano_tokenizer):
    results = nano_run(tmp_path, nano_tokenizer, Registry(), "grad_accum=3",
                       "precision=bf16-mixed", steps=2)
    assert results[0].steps == 2  # optimizer steps
    assert results[0].tokens == 2 * 3 * 4 * 64  # every micro-batch was trained on
    assert results[0].last_loss is not None


@pytest.mark.parametrize("schedule, end", [("cosine", 0.1), ("linear", 0.0), ("constant", 1.0)])
def test_schedules_warm_up_then_decay(schedule, end):
    from moxin_core.module import build_optimizer, build_scheduler
    from moxin_core.variants import HyperParameters

    hp = HyperParameters(max_steps=20, warmup_steps=5, lr=1.0, min_lr_ratio=0.1, schedule=schedule)
    optimizer = build_optimizer(torch.nn.Linear(2, 2), hp)
    scheduler = build_scheduler(optimizer, hp)
    lrs = []
    for _ in range(20):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(1.0)
    assert lrs[1] < lrs[2] < lrs[3] < lrs[4]
    assert scheduler.get_last_lr()[0] == pytest.approx(end, abs=1e-6)


def test_weight_decay_skips_norms_and_biases():
    from moxin_core.module import optimizer_groups

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = optimizer_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "good.jsonl").write_text('{"text": "a fine document"}\n' * 5)
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "broken.jsonl").write_text('{"text": "fine"}\n{"text": "fine"}\n{oops}\n')
    (tmp_path / "fields.jsonl").write_text('{"body": "x", "title": "y"}\n')
    return tmp_path


@pytest.mark.parametrize("settings, message", [
    (["data=[{source: files, paths: MISSING}]"], "matches no file"),
    (["data=[{source: files, paths: DIR/empty.jsonl}]"], "empty"),
    (["data=[{source: files, paths: DIR/broken.jsonl}]"], "broken.jsonl:3: malformed JSON"),
    (["data=[{source: files, paths: DIR/fields.jsonl}]"], "no field 'text' (fields present: body, title)"),
    (["lr=-0.001"], "lr must be a positive number"),
    (["max_steps=0"], "max_steps must be a positive integer"),
    (["seq_len=4096"], "exceeds the model's max_position_embeddings"),
    (["data=[{source: nowhere}]"], "Unknown data source 'nowhere'"),
    (["warmup=3"], "Unknown setting 'warmup'"),
])
def test_bad_input_fails_before_training(tmp_path, data_dir, nano_tokenizer, settings, message):
    settings = [s.replace("MISSING", str(data_dir / "missing.jsonl")).replace("DIR", str(data_dir))
                for s in settings]
    steps = 0 if settings == ["max_steps=0"] else 6  # --max-steps wins over --set
    with pytest.raises(MoxinError) as info:
        nano_run(tmp_path / "run", nano_tokenizer, Registry(), *settings, steps=steps)
    assert message in str(info.value)
    assert not (tmp_path / "run" / STAGE / "checkpoints").exists()


def test_cli_bad_input_is_one_paragraph(tmp_path, data_dir, nano_tokenizer):
    result = run_cli("train", "moxin-tiny-base", "--out", str(tmp_path / "run"), "--stage", STAGE,
                     *sum((["--set", s] for s in NANO_SETS), []), "--set", f"tokenizer={nano_tokenizer}",
                     "--set", f"data=[{{source: files, paths: {data_dir / 'broken.jsonl'}}}]")
    assert_clean_error(result, "broken.jsonl:3")


def test_cli_export_and_generate(finished, tmp_path):
    out, _ = finished
    result = run_cli("export", str(out / STAGE), "--format", "hf", "--out", str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hf" / "tokenizer.model").exists()
    again = run_cli("export", str(out / STAGE), "--format", "hf", "--out", str(tmp_path / "hf"))
    assert_clean_error(again, "--force")
    assert_clean_error(run_cli("export", str(out / STAGE), "--format", "hf", "--out",
                               str(tmp_path / "hf2"), "--option", "outtype=q8_0"),
                       "Exporter 'hf' does not take option(s) outtype")
    generated = run_cli("generate", str(tmp_path / "hf"), "--prompt", "Question:",
                        "--max-new-tokens", "5")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.strip()


def test_cli_chat_uses_the_chat_template(finished, tmp_path):
    out, _ = finished
    result = run_cli("chat", str(out / STAGE), "--system", "Be brief.", "--message", "Hello",
                     "--message", "What is 2 + 3?", "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    replies = [line for line in result.stdout.splitlines() if line.startswith("assistant> ")]
    assert len(replies) == 2, result.stdout
    piped = run_cli("chat", str(out / STAGE), "--max-new-tokens", "3",
                    input_text="Hello\n/exit\n")
    assert piped.returncode == 0 and piped.stdout.count("assistant> ") == 1, piped.stdout
    assert_clean_error(run_cli("chat", str(tmp_path / "missing.gguf"), "--message", "x"),
                       "missing.gguf")


def test_ctrl_c_reports_the_last_checkpoint_and_resume(tmp_path, nano_tokenizer):
    class CtrlC(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 3:
                raise KeyboardInterrupt

    class Plugin:
        @hookimpl
        def moxin_callbacks(self, stage, out_dir):
            return [CtrlC()]

    pm = get_plugin_manager()
    pm.register_plugin(Plugin(), name="ctrl-c", distribution="test", version="0")
    with pytest.raises(MoxinError, match=r"interrupted at step 3\. Last checkpoint: .*step=000002"
                                         r".*--resume"):
        nano_run(tmp_path, nano_tokenizer, Registry(pm))
    (result,) = nano_run(tmp_path, nano_tokenizer, Registry(), resume=True)
    assert result.steps == 6
