"""GRPO through `moxin train` at nano scale: logged statistics, mu updates per rollout, the
evaluator, exact resume after SIGKILL, and the variants' hyper-parameters."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from moxin_core.errors import MoxinError
from moxin_core.plugins import Registry
from moxin_core.reporting import sha256_file
from moxin_core.testing import subprocess_env
from moxin_core.training.stage import train_variant

NANO = ["seq_len=112", "micro_batch_size=2", "log_every=1", "grpo.evaluators=[]",
        "grpo.objective_options.num_generations=4", "grpo.objective_options.max_new_tokens=12",
        "grpo.objective_options.temperature=1.0", "grpo.lr=1e-3",
        # a random model never answers right: reward the length too, so groups have variance
        "grpo.objective_options.rewards={math: 1.0, length: 1.0}",
        "grpo.objective_options.reward_options={length: {max_length: 10, cache: 8}}"]


def _sets(hf_folder, *extra):
    return [*NANO, f"grpo.model={hf_folder}", *extra]


def _rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_grpo_stage_trains_and_logs_its_statistics(tmp_path, hf_folder):
    (result,) = train_variant("moxin-tiny-reasoning", tmp_path, stage="grpo",
                              sets=_sets(hf_folder, "max_steps=4", "checkpoint_every=2",
                                         "grpo.objective_options.iterations=2",
                                         "grpo.objective_options.beta=0.04"))
    assert result.steps == 4
    manifest = json.loads((tmp_path / "grpo" / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["data"]["stats"]["prompts"] >= 4
    assert manifest["data"]["stats"]["skipped_too_long"] == 0
    rows = _rows(tmp_path / "grpo" / "metrics.csv")
    for name in ("reward", "reward_std", "rewards/math/mean", "rewards/math/std",
                 "rewards/length/mean", "rewards/length/std",
                 "zero_std_groups", "kl", "clip_ratio/low", "clip_ratio/high",
                 "completion/mean_length", "completion/max_length", "completion/truncated",
                 "generation/tokens_per_s"):
        assert f"train/{name}" in rows[0], name
    # mu = 2: steps 0-1 share one rollout, 2-3 the next; the second use of a rollout sees a
    # policy one update further on, so its importance ratios leave 1 and may clip
    speed = [row["train/generation/tokens_per_s"] for row in rows]
    assert speed[0] == speed[1] and speed[2] == speed[3] and speed[1] != speed[2]
    assert float(rows[0]["train/kl"]) == 0.0 and float(rows[1]["train/kl"]) > 0.0
    assert (tmp_path / "grpo" / "hf" / "model.safetensors").exists()
    # `moxin train` reports an RL stage's reward beside its loss: first and last 5 steps
    from moxin_core.commands.train import format_result

    rewards = [float(row["train/reward"]) for row in rows]
    line = format_result(result)[0]
    assert f"reward {sum(rewards[:4]) / 4:.3f} -> {sum(rewards[-4:]) / 4:.3f}" in line, line


def test_heldout_math_evaluator_writes_its_scores(hf_folder):
    evaluator = Registry().get("evaluators", "heldout-math")(num=12, max_new_tokens=8,
                                                             samples=3, ks=[1, 3])
    scores = evaluator(str(hf_folder))
    assert set(scores) == {"pass@1", "mean_reward", "boxed", "n", "pass@1_sampled",
                           "pass@3_sampled"}
    assert scores["n"] == 12 and 0 <= scores["pass@1"] <= 1
    assert scores["pass@1_sampled"] <= scores["pass@3_sampled"] <= 1
    with pytest.raises(MoxinError, match="ks"):
        Registry().get("evaluators", "heldout-math")(samples=2, ks=[4])


def test_pass_at_k_is_the_unbiased_estimator():
    from moxin_plugin_reasoning.evaluate import pass_at_k

    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 2) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)


def test_mu_above_one_refuses_gradient_accumulation(tmp_path, hf_folder):
    with pytest.raises(MoxinError, match="iterations > 1 needs grad_accum 1"):
        train_variant("moxin-tiny-reasoning", tmp_path, stage="grpo",
                      sets=_sets(hf_folder, "max_steps=2", "grad_accum=2",
                                 "grpo.objective_options.iterations=2"))


def test_group_of_one_fails_before_training(tmp_path, hf_folder):
    with pytest.raises(MoxinError, match="num_generations must be at least 2"):
        train_variant("moxin-tiny-reasoning", tmp_path, stage="grpo",
                      sets=_sets(hf_folder, "max_steps=2",
                                 "grpo.objective_options.num_generations=1"))


def test_moxin_reasoning_carries_the_deepscaler_hyperparameters():
    variant = Registry().get("variants", "moxin-reasoning")()
    sft, grpo8, grpo16 = variant.stages
    assert sft.objective == "sft" and sft.model == "moxin-org/moxin-instruct-7b"
    for stage, length in ((grpo8, 8192), (grpo16, 16384)):
        options = stage.objective_options
        assert stage.objective == "grpo" and stage.model == "previous"
        assert (options["num_generations"], options["temperature"], options["beta"]) == (8, 0.6,
                                                                                          0.001)
        assert options["max_new_tokens"] == length and options["rewards"] == {"math": 1.0}
        assert stage.hparams.lr == 1e-6
        assert stage.hparams.micro_batch_size * stage.hparams.devices == 64
        assert stage.data[0].options["path"] == "agentica-org/DeepScaleR-Preview-Dataset"
    tiny = Registry().get("variants", "moxin-tiny-reasoning")()
    assert tiny.stages[0].model == "variant:moxin-tiny-instruct"
    assert tiny.stages[1].data[0].source == "embedded_problems"


def _command(out, hf_folder, *extra):
    sets = _sets(hf_folder, "max_steps=6", "checkpoint_every=3", "keep_checkpoints=3",
                 "grpo.objective_options.iterations=2", "grpo.objective_options.beta=0.04")
    return [sys.executable, "-m", "moxin_core.cli", "train", "moxin-tiny-reasoning", "--out",
            str(out), "--stage", "grpo", *sum((["--set", s] for s in sets), []), *extra]


@pytest.mark.slow
def test_sigkill_mid_grpo_then_resume_is_bit_identical(tmp_path, hf_folder):
    full = subprocess.run(_command(tmp_path / "full", hf_folder), capture_output=True, text=True,
                          env=subprocess_env(), timeout=900)
    assert full.returncode == 0, full.stderr[-3000:]
    reference = sha256_file(tmp_path / "full" / "grpo" / "hf" / "model.safetensors")

    out = tmp_path / "killed"
    process = subprocess.Popen(_command(out, hf_folder), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=subprocess_env())
    # step 3 is the first use of the second rollout: the resumed run must reuse it, not sample
    marker = out / "grpo" / "checkpoints" / "step=000003.ckpt"
    deadline = time.time() + 600
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert marker.exists() and not (out / "grpo" / "hf").exists()

    resumed = subprocess.run(_command(out, hf_folder, "--resume"), capture_output=True,
                             text=True, env=subprocess_env(), timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming stage 'grpo'" in resumed.stdout
    assert sha256_file(out / "grpo" / "hf" / "model.safetensors") == reference
    # every step logged once, with the uninterrupted run's rewards
    ours, theirs = (_rows(d / "grpo" / "metrics.csv") for d in (out, tmp_path / "full"))
    assert len(ours) == 6
    assert [r["train/reward"] for r in ours] == [r["train/reward"] for r in theirs]

    # killed while generating a rollout (the third: after the step-3 checkpoint), then resumed
    out = tmp_path / "killed-generating"
    killed = subprocess.run(_command(out, hf_folder), capture_output=True, text=True,
                            env=subprocess_env({"MOXIN_FAULTS": "grpo-generate@3"}), timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (out / "grpo" / "checkpoints" / "step=000003.ckpt").is_dir()
    resumed = subprocess.run(_command(out, hf_folder, "--resume"), capture_output=True,
                             text=True, env=subprocess_env(), timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sha256_file(out / "grpo" / "hf" / "model.safetensors") == reference


def test_grpo_with_lora_trains_adapters_against_the_adapters_off_reference(tmp_path, hf_folder):
    from moxin_core.testing import check_lora_stage

    train_variant("moxin-tiny-reasoning", tmp_path, stage="grpo",
                  sets=_sets(hf_folder, "max_steps=3", "lora.r=8", "grpo.lr=0.01",
                             "grpo.objective_options.beta=0.04"))
    check_lora_stage(tmp_path / "grpo", hf_folder)
    rows = _rows(tmp_path / "grpo" / "metrics.csv")
    # the reference is the starting model: no divergence before the first update, some after
    assert float(rows[0]["train/kl"]) == 0.0 and float(rows[-1]["train/kl"]) > 0.0
