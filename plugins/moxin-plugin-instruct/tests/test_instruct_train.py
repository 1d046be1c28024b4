"""moxin-tiny-instruct through `moxin train` at nano scale: stages, stats, evaluators, resume."""

from __future__ import annotations

import json
import shutil

import lightning.pytorch as pl
import pytest
import torch

from moxin_core import hookimpl
from moxin_core.errors import MoxinError
from moxin_core.plugins import Registry, get_plugin_manager
from moxin_core.training.stage import train_variant

NANO = ["seq_len=128", "micro_batch_size=2", "checkpoint_every=2", "log_every=1",
        "sft.evaluators=[]", "dpo.evaluators=[]",
        "sft.data=[{source: embedded_instructions, num_examples: 200}]",
        "dpo.data=[{source: embedded_preferences, num_examples: 100}]"]


def _run(out, hf_folder, *extra, registry=None, **kwargs):
    return train_variant("moxin-tiny-instruct", out, sets=[*NANO, f"sft.model={hf_folder}", *extra],
                         registry=registry or Registry(), **kwargs)


@pytest.fixture(scope="module")
def instruct_run(tmp_path_factory, hf_folder):
    out = tmp_path_factory.mktemp("instruct")
    results = _run(out, hf_folder, "sft.max_steps=4", "dpo.max_steps=4")
    return out, results


def test_sft_then_dpo_write_their_stage_folders(instruct_run):
    out, (sft, dpo) = instruct_run
    assert (sft.name, dpo.name) == ("sft", "dpo") and sft.steps == dpo.steps == 4
    for stage in ("sft", "dpo"):
        manifest = json.loads((out / stage / "manifest.json").read_text())
        assert manifest["status"] == "complete"
        assert (out / stage / "hf" / "model.safetensors").exists()
    stats = json.loads((out / "sft" / "manifest.json").read_text())["data"]["stats"]
    assert stats["conversations"] > 0 and stats["assistant_tokens"] > 0
    header = (out / "dpo" / "metrics.csv").read_text().splitlines()[0]
    for name in ("train/rewards/chosen", "train/rewards/rejected", "train/rewards/accuracy",
                 "train/rewards/margin"):
        assert name in header
    assert "train/token_loss" in (out / "sft" / "metrics.csv").read_text().splitlines()[0]
    # the reference log-probs are stored with the run: 4 steps x 2 pairs, and they are the
    # starting model's (the SFT result's) log-probs of exactly the pairs DPO trained on
    stored = torch.load(out / "dpo" / "reference_logps.pt", weights_only=True)
    assert stored["logps"].shape == (8, 4)
    from moxin_core.api import (DataSpec, Registry, build_datamodule, build_objective,
                                load_model, sequence_logps)

    start, tokenizer, _ = load_model(out / "sft" / "hf")
    objective = build_objective(Registry(), "dpo", {"loss_type": "dpo_norm"})
    data = DataSpec("embedded_preferences", 1.0, {"num_examples": 100})
    batches = build_datamodule(Registry(), [data], objective, tokenizer, 128, 2).iter_batches()
    cached = dict(zip(stored["keys"].tolist(), stored["logps"]))
    for _ in range(4):
        batch = next(batches)
        with torch.no_grad():
            total, count = sequence_logps(start, batch["input_ids"], batch["attention_mask"],
                                          batch["completion_mask"])
        for i, key in enumerate(batch["pair_keys"]):
            expected = torch.stack([total[i], count[i], total[i + 2], count[i + 2]])
            torch.testing.assert_close(cached[key], expected, atol=1e-4, rtol=1e-5)


class _StopAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True  # as a scheduler's SIGTERM does: stop between steps


def test_resumed_dpo_reuses_the_stored_reference_log_probs(tmp_path, hf_folder, monkeypatch,
                                                           capsys):
    from moxin_plugin_instruct.dpo import DPO

    _run(tmp_path, hf_folder, "sft.max_steps=2", "dpo.max_steps=4", stage="sft")

    class Interrupt:
        @hookimpl
        def moxin_callbacks(self, stage, out_dir):
            return [_StopAt(2)] if stage.name == "dpo" else []

    pm = get_plugin_manager()
    pm.register_plugin(Interrupt(), name="interrupt", distribution="test", version="0")
    with pytest.raises(MoxinError, match="stopped at step 2 of 4"):
        _run(tmp_path, hf_folder, "sft.max_steps=2", "dpo.max_steps=4", stage="dpo",
             registry=Registry(pm))
    cache = tmp_path / "dpo" / "reference_logps.pt"
    first = cache.stat().st_mtime_ns

    def no_recompute(*args, **kwargs):
        raise AssertionError("the resumed run recomputed the reference log-probs")

    monkeypatch.setattr(DPO, "_precompute", no_recompute)
    (result,) = _run(tmp_path, hf_folder, "sft.max_steps=2", "dpo.max_steps=4", stage="dpo",
                     resume=True)
    assert result.steps == 4 and cache.stat().st_mtime_ns == first
    assert "Loaded reference log-probs of 8 pairs" in capsys.readouterr().out


def test_instruct_starts_from_the_base_variants_result(tmp_path, hf_folder):
    with pytest.raises(MoxinError, match="final model of variant 'moxin-tiny-base'.*enhance/hf"):
        train_variant("moxin-tiny-instruct", tmp_path, stage="sft", sets=NANO + ["max_steps=1"])
    shutil.copytree(hf_folder, tmp_path / "enhance" / "hf")
    (result,) = train_variant("moxin-tiny-instruct", tmp_path, stage="sft",
                              sets=NANO + ["max_steps=1"])
    assert result.steps == 1
    config = (tmp_path / "sft" / "config.yaml").read_text()
    assert str(tmp_path / "enhance" / "hf") in config


def test_evaluators_run_after_the_stage_and_are_stored(tmp_path, hf_folder):
    (sft, dpo) = _run(tmp_path, hf_folder, "sft.max_steps=1", "dpo.max_steps=1",
                      "sft.evaluators=[heldout-arithmetic]",
                      "dpo.evaluators=[heldout-preferences]")
    assert set(sft.evals["heldout-arithmetic"]) == {"accuracy", "answered", "n"}
    assert sft.evals["heldout-arithmetic"]["n"] == 300
    scores = json.loads((tmp_path / "dpo" / "eval.json").read_text())["heldout-preferences"]
    assert 0 <= scores["reward_accuracy"] <= 1 and scores["n"] > 150


def test_moxin_instruct_carries_the_tulu3_hyperparameters():
    variant = Registry().get("variants", "moxin-instruct")()
    sft, dpo = variant.stages
    assert (sft.objective, dpo.objective) == ("sft", "dpo") and dpo.model == "previous"
    assert sft.objective_options["reduction"] == "sum"
    assert (sft.hparams.lr, sft.hparams.schedule, sft.hparams.warmup_ratio) == (5e-6, "linear", 0.03)
    assert (sft.hparams.weight_decay, sft.hparams.seq_len) == (0.0, 4096)
    assert dpo.objective_options == {"loss_type": "dpo_norm", "beta": 5.0,
                                     "reference": "precomputed"}
    assert (dpo.hparams.lr, dpo.hparams.warmup_ratio, dpo.hparams.seq_len) == (5e-7, 0.1, 2048)
    for stage in (sft, dpo):
        assert stage.summary()["hyper_parameters"]["global_batch"] == 128
    tiny = Registry().get("variants", "moxin-tiny-instruct")()
    assert tiny.stages[0].model == "variant:moxin-tiny-base"
    assert tiny.stages[1].evaluators == ["heldout-arithmetic", "heldout-preferences"]


def test_variants_show_each_stages_objective_options(capsys):
    from moxin_core.cli import main

    assert main(["variants"]) == 0
    text = capsys.readouterr().out
    assert "dpo: dpo(loss_type=dpo_norm, beta=5.0, reference=precomputed) from previous" in text
    assert "sft: sft(reduction=sum) from variant:moxin-tiny-base" in text
    assert main(["variants", "--json"]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    stages = {s["name"]: s for s in entries["moxin-instruct"]["stages"]}
    assert stages["dpo"]["objective_options"]["beta"] == 5.0


#: left in this process's environment by libraries other tests run in-process (accelerate,
#: behind TRL's trainers, sets MASTER_PORT=29500 and listens there; a single-device Lightning
#: fit sets RANK, WORLD_SIZE, ...): a child would take them for a launcher's settings
DISTRIBUTED_ENV = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE",
                   "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK")


def _fresh_env() -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    return {**env, "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_two_ranks_run_sft_then_dpo_with_one_reference_file(tmp_path, hf_folder):
    """2 processes (DDP on CPU): the stage folders are written once, each rank precomputes the
    reference log-probs of its own pairs and all of them land in one file, the evaluator runs
    once, and the summary is printed once."""
    import subprocess
    import sys

    settings = [*NANO, f"sft.model={hf_folder}", "max_steps=4", "devices=2", "strategy=ddp",
                "accelerator=cpu", "dpo.evaluators=[heldout-preferences]"]
    result = subprocess.run(
        [sys.executable, "-m", "moxin_core.cli", "train", "moxin-tiny-instruct", "--out",
         str(tmp_path), *sum((["--set", s] for s in settings), [])],
        capture_output=True, text=True, timeout=900, env=_fresh_env())
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("stage dpo:") == 1 and "on 2 ranks" in result.stdout
    assert result.stdout.count("Evaluating") == 1
    stored = torch.load(tmp_path / "dpo" / "reference_logps.pt", weights_only=True)
    # 4 steps x 2 pairs x 2 ranks, every pair once
    assert stored["logps"].shape == (16, 4) and len(set(stored["keys"].tolist())) == 16
    assert stored["fingerprint"]["world_size"] == 2
    manifest = json.loads((tmp_path / "dpo" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and "heldout-preferences" in manifest["eval"]


@pytest.mark.slow
def test_sigkill_during_the_reference_precompute_then_resume_is_bit_identical(tmp_path,
                                                                              hf_folder):
    """Killed while the DPO reference log-probs are being computed (before the first step; no
    file is written yet), the resumed run computes them again and ends on the same weights."""
    import subprocess
    import sys

    from moxin_core.reporting import sha256_file

    settings = [*NANO, "dpo.max_steps=4", f"dpo.model={hf_folder}"]

    def train(out, *extra, faults=None):
        env = {**_fresh_env(), **({"MOXIN_FAULTS": faults} if faults else {})}
        return subprocess.run(
            [sys.executable, "-m", "moxin_core.cli", "train", "moxin-tiny-instruct", "--stage",
             "dpo", "--out", str(out), *sum((["--set", s] for s in settings), []), *extra],
            capture_output=True, text=True, timeout=900, env=env)

    full = train(tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    killed = train(tmp_path / "killed", faults="dpo-reference@3")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert "Reference log-probs" in killed.stderr
    assert not (tmp_path / "killed" / "dpo" / "reference_logps.pt").exists()
    resumed = train(tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (sha256_file(tmp_path / "killed" / "dpo" / "hf" / "model.safetensors")
            == sha256_file(tmp_path / "full" / "dpo" / "hf" / "model.safetensors"))


def test_sft_then_dpo_with_lora_train_adapters_and_dpo_refers_to_the_adapters_off(tmp_path,
                                                                                  hf_folder):
    """LoRA on both objectives: adapters train on a frozen base and merge into hf/; DPO's
    reference is the policy with its adapters off (no copy), so at step 0 the two agree."""
    import csv

    from moxin_core.testing import check_lora_stage

    _run(tmp_path, hf_folder, "sft.max_steps=4", "dpo.max_steps=4", "lora.r=8", "lr=0.01",
         "dpo.objective_options.reference=model")
    check_lora_stage(tmp_path / "sft", hf_folder)
    check_lora_stage(tmp_path / "dpo", tmp_path / "sft" / "hf")
    with open(tmp_path / "dpo" / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/rewards/margin")]
    assert float(rows[0]["train/rewards/chosen"]) == 0.0
    assert float(rows[0]["train/rewards/rejected"]) == 0.0
    assert any(float(r["train/rewards/margin"]) != 0.0 for r in rows[1:])
