"""Reproducible, fault-tolerant, safe runs: manifests, `moxin reproduce`, injected faults (SIGKILL
mid-step, mid-accumulation, mid-checkpoint-write, mid-export; a full disk; NaN), the run lock, the
openness report and the safety rules for files moxin reads."""

from __future__ import annotations

import json
from importlib import metadata
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moxin_core.checkpointing import CHECKSUM, STATE
from moxin_core.faults import fault_point
from moxin_core.reporting import sha256_file
from moxin_core.runs import RunLock
from tests.conftest import NANO_SETS, REPO, assert_clean_error, run_cli, subprocess_env

STAGE = "pretrain-128"


def _train_args(out: Path, tokenizer: Path, steps: int, *sets: str) -> list[str]:
    settings = [*NANO_SETS, f"tokenizer={tokenizer}", *sets]
    return ["train", "moxin-tiny-base", "--out", str(out), "--stage", STAGE, "--max-steps",
            str(steps), *sum((["--set", s] for s in settings), [])]


def _train(out: Path, tokenizer: Path, steps: int, *sets: str, faults: str | None = None,
           resume: bool = False) -> subprocess.CompletedProcess:
    args = _train_args(out, tokenizer, steps, *sets) + (["--resume"] if resume else [])
    return run_cli(*args, env={"MOXIN_FAULTS": faults} if faults else None)


def _weights(out: Path) -> str:
    return sha256_file(out / STAGE / "hf" / "model.safetensors")


def _manifest(out: Path) -> dict:
    return json.loads((out / STAGE / "manifest.json").read_text())


# -- fault points themselves -------------------------------------------------------------------

def test_fault_points_act_on_the_armed_hit_only(monkeypatch):
    monkeypatch.setenv("MOXIN_FAULTS", "probe-nan@2:nan,probe-disk@1:enospc")
    assert fault_point("probe-nan") is None
    assert fault_point("probe-nan") == "nan"
    assert fault_point("probe-nan") is None
    with pytest.raises(OSError, match="No space left"):
        fault_point("probe-disk")
    monkeypatch.setenv("MOXIN_FAULTS", "probe@x")
    with pytest.raises(ValueError, match="NAME@N"):
        fault_point("probe")


# -- the manifest: written at the start, completed at the end, marked when a run stops ---------

@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, nano_tokenizer):
    """An uninterrupted 8-step run with grad_accum 2: the weights every fault test must reach."""
    out = tmp_path_factory.mktemp("reference")
    result = _train(out, nano_tokenizer, 8, "grad_accum=2")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_the_manifest_records_what_a_rerun_needs(reference_run):
    manifest = _manifest(reference_run)
    assert manifest["status"] == "complete" and manifest["started_at"] <= manifest["finished_at"]
    assert manifest["out"] == str(reference_run.resolve()) and manifest["seed"] == 0
    assert manifest["hardware"]["cpu_count"] == os.cpu_count()
    assert manifest["versions"]["torch"] == metadata.version("torch")
    assert manifest["code_git"] is None or len(manifest["code_git"]["commit"]) == 40
    stage = manifest["variant_record"]["stages"][0]
    assert stage["name"] == STAGE and stage["hyper_parameters"]["grad_accum"] == 2
    assert stage["hyper_parameters"]["seq_len"] == 64 and stage["model"] == "moxin-nano"
    # every checkpoint kept on disk is listed with the hash of its weights
    folder = reference_run / STAGE / "checkpoints"
    assert manifest["checkpoints"] == {p.name: sha256_file(p / "model.safetensors")
                                       for p in sorted(folder.iterdir())}
    assert len(manifest["checkpoints"]) == 2 and manifest["skipped_steps"] == 0


# -- SIGKILL at chosen moments, then --resume: bit-identical -----------------------------------

def _kill_cases() -> list[tuple[str, str]]:
    rng = random.Random(13)  # moments drawn once; the ids name them
    micro = rng.randrange(5, 14, 2)  # odd: the first micro-batch of an accumulation window
    step_kill = rng.randrange(4, 15, 2)  # even: the second (the optimizer step's own)
    return [("mid-accumulation", f"micro-batch@{micro}"),
            ("mid-step", f"micro-batch@{step_kill}"),
            ("checkpoint-write", f"checkpoint-write@{rng.randrange(2, 4)}"),
            ("export", "export@1")]


@pytest.mark.slow
@pytest.mark.parametrize("moment,faults", _kill_cases(), ids=[c[0] for c in _kill_cases()])
def test_sigkill_then_resume_is_bit_identical(moment, faults, reference_run, nano_tokenizer,
                                              tmp_path):
    out = tmp_path / "run"
    killed = _train(out, nano_tokenizer, 8, "grad_accum=2", faults=faults)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    manifest = _manifest(out)
    assert manifest["status"] == "running"  # what a killed run leaves: it never got to say more
    partial = [p.name for p in (out / STAGE / "checkpoints").iterdir()
               if p.name.endswith(".partial")] if (out / STAGE / "checkpoints").is_dir() else []
    if moment == "checkpoint-write":
        assert partial, "the kill should have hit a checkpoint being written"
    if moment == "export":
        assert not (out / STAGE / "hf").exists() and (out / STAGE / "hf.partial").is_dir()
    resumed = _train(out, nano_tokenizer, 8, "grad_accum=2", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _weights(out) == _weights(reference_run), moment
    assert _manifest(out)["status"] == "complete" and _manifest(out)["resumed_at"]
    assert not any(p.name.endswith(".partial") for p in (out / STAGE / "checkpoints").iterdir())


# -- a full disk, NaN, a damaged checkpoint ---------------------------------------------------

def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(nano_tokenizer, tmp_path):
    out = tmp_path / "run"
    result = _train(out, nano_tokenizer, 6, faults="checkpoint-write@2:enospc")
    assert_clean_error(result, "Could not write checkpoint", "step=000004.ckpt",
                       "No space left on device", "last good checkpoint is",
                       "step=000002.ckpt", "--resume")
    folder = out / STAGE / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step=000002.ckpt"]
    assert (folder / "step=000002.ckpt" / "model.safetensors").is_file()
    manifest = _manifest(out)
    assert manifest["status"] == "failed" and "No space left" in manifest["reason"]
    assert manifest["last_checkpoint"].endswith("step=000002.ckpt")
    assert not (out / STAGE / "hf").exists()


def test_a_nan_loss_stops_with_the_last_good_checkpoint_named(nano_tokenizer, tmp_path):
    out = tmp_path / "run"
    result = _train(out, nano_tokenizer, 6, faults="loss@4:nan")
    assert_clean_error(result, "Non-finite loss (nan) at optimizer step 3",
                       "last good checkpoint is", "step=000002.ckpt", "nonfinite=skip")
    manifest = _manifest(out)
    assert manifest["status"] == "failed" and "NonFiniteError" in manifest["reason"]
    assert not (out / STAGE / "hf").exists()


def test_an_infinite_gradient_stops_the_run_too(nano_tokenizer, tmp_path):
    out = tmp_path / "run"
    result = _train(out, nano_tokenizer, 6, faults="gradient@3:nan")
    assert_clean_error(result, "Non-finite gradient at optimizer step 2",
                       "last good checkpoint is", "step=000002.ckpt")
    assert _manifest(out)["status"] == "failed"


def test_nonfinite_skip_skips_and_counts_the_step(nano_tokenizer, tmp_path):
    plain, skipped = tmp_path / "plain", tmp_path / "skipped"
    every = ("checkpoint_every=1", "keep_checkpoints=10")
    assert _train(plain, nano_tokenizer, 4, *every).returncode == 0
    result = _train(skipped, nano_tokenizer, 4, *every, "nonfinite=skip", faults="loss@3:nan")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "non-finite gradients, step skipped" in result.stdout + result.stderr
    assert _manifest(skipped)["skipped_steps"] == 1
    # the skipped step left weights and optimiser state alone: after it, the weights are those
    # of the step before, in the plain run
    from safetensors.torch import load_file

    def ckpt(out: Path, step: int) -> dict:
        return load_file(out / STAGE / "checkpoints" / f"step={step:06d}.ckpt" /
                         "model.safetensors")

    after_skip, before = ckpt(skipped, 3), ckpt(plain, 2)
    assert all(torch.equal(after_skip[k], before[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in load_file(
        skipped / STAGE / "hf" / "model.safetensors").values())


def test_a_damaged_checkpoint_is_not_resumed_from(nano_tokenizer, tmp_path):
    out = tmp_path / "run"
    assert _train(out, nano_tokenizer, 6, faults="checkpoint-write@3").returncode == -9
    last = out / STAGE / "checkpoints" / "step=000004.ckpt"
    weights = last / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte in a tensor
    weights.write_bytes(bytes(data))
    assert_clean_error(_train(out, nano_tokenizer, 6, resume=True), str(weights),
                       "does not match the SHA-256", CHECKSUM, "damaged")


# -- safety: checkpoints hold no code -----------------------------------------------------------

class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('MOXIN_PWNED', '/nonexistent/x')}",))


def test_a_checkpoint_with_pickled_code_is_refused_unrun(reference_run, nano_tokenizer,
                                                        tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    for name in ("hf", "manifest.json"):
        target = out / STAGE / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    last = sorted((out / STAGE / "checkpoints").iterdir())[-1]
    state = last / STATE
    marker = tmp_path / "pwned"
    os.environ["MOXIN_PWNED"] = str(marker)
    try:
        torch.save({"payload": _Payload()}, state)  # what a torch.save'd file can carry
    finally:
        del os.environ["MOXIN_PWNED"]
    result = _train(out, nano_tokenizer, 8, "grad_accum=2", resume=True)
    assert_clean_error(result, str(state), "other than tensors", "does not unpickle")
    assert not marker.exists()


def test_set_values_are_never_evaluated(nano_tokenizer, tmp_path):
    marker = tmp_path / "ran"
    code = f"__import__('os').system('touch {marker}')"
    result = _train(tmp_path / "run", nano_tokenizer, 2, f"lr={code}")
    assert_clean_error(result, "lr")
    result = _train(tmp_path / "run2", nano_tokenizer, 2, f"schedule=!!python/object/apply:"
                    f"os.system ['touch {marker}']")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert not marker.exists()


def test_a_model_with_its_own_code_is_refused_without_running_it(nano_tokenizer, tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / "config.json").write_text(json.dumps({
        "model_type": "custom-lm", "architectures": ["CustomLM"], "vocab_size": 512,
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                     "AutoModelForCausalLM": "modeling_custom.CustomLM"}}))
    code = (f"open({str(marker)!r}, 'w').write('x')\nfrom transformers import PretrainedConfig\n"
            "class CustomConfig(PretrainedConfig):\n    model_type = 'custom-lm'\n")
    for name in ("configuration_custom.py", "modeling_custom.py"):
        (folder / name).write_text(code)
    # transformers asks "Do you wish to run the custom code? [y/N]" when not told: a piped "y"
    # must not be taken for consent
    args = _train_args(tmp_path / "run", nano_tokenizer, 1, f"{STAGE}.model={folder}")
    result = run_cli(*args, input_text="y\n")
    assert_clean_error(result, str(folder), "never runs code shipped with a model")
    assert not marker.exists()


# -- one run per folder -------------------------------------------------------------------------

def test_a_second_run_on_the_same_out_is_refused_naming_the_holder(nano_tokenizer, tmp_path):
    out = tmp_path / "run"
    with RunLock(out):  # this test process holds the folder, as a running `moxin train` would
        result = _train(out, nano_tokenizer, 2)
        assert_clean_error(result, str(out), "in use by another moxin run",
                           f"process {os.getpid()}", "another --out")
        assert not (out / STAGE).exists()
    # released: the run goes ahead; a SIGKILLed holder releases it too (the kernel drops flock)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from moxin_core.runs "
                               "import RunLock; RunLock(sys.argv[1]).acquire(); print('held', "
                               "flush=True); time.sleep(600)", str(out)],
                              stdout=subprocess.PIPE, text=True, env=subprocess_env(), cwd=REPO)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    assert _train(out, nano_tokenizer, 2).returncode == 0


# -- moxin reproduce ----------------------------------------------------------------------------

@pytest.mark.slow
def test_reproduce_base_and_instruct_runs_bit_identically(nano_tokenizer, tmp_path):
    out = tmp_path / "run"
    small = ["seq_len=64", "micro_batch_size=4", "warmup_steps=1", "checkpoint_every=2"]
    base = run_cli("train", "moxin-tiny-base", "--out", str(out), "--max-steps", "3",
                   *sum((["--set", s] for s in [*small, "pretrain-128.model=moxin-nano",
                                                f"tokenizer={nano_tokenizer}"]), []))
    assert base.returncode == 0, base.stderr[-3000:]
    instruct = run_cli("train", "moxin-tiny-instruct", "--out", str(out), "--max-steps", "3",
                       *sum((["--set", s] for s in [*small, "sft.evaluators=[]",
                                                    "dpo.evaluators=[heldout-preferences]"]), []))
    assert instruct.returncode == 0, instruct.stderr[-3000:]

    result = run_cli("reproduce", str(out), "--out", str(tmp_path / "again"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stages = ["pretrain-128", "pretrain-256", "enhance", "sft", "dpo"]
    for stage in stages:
        assert f"stage {stage}: bit-identical weights" in result.stdout, stage
        assert (sha256_file(tmp_path / "again" / stage / "hf" / "model.safetensors")
                == sha256_file(out / stage / "hf" / "model.safetensors")), stage
    report = json.loads((tmp_path / "again" / "reproduce.json").read_text())
    assert report["identical"] and [s["stage"] for s in report["stages"]] == stages

    # a run that does not reproduce: the report names the first differing loss and the versions
    # (the original's records are altered as a run on other versions would have left them)
    manifest_file = out / "sft" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["checkpoint_sha256"] = "0" * 64
    manifest["versions"]["torch"] = "2.0.0"
    manifest_file.write_text(json.dumps(manifest))
    metrics = (out / "sft" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    row = metrics[2].split(",")
    row[header.index("train/loss")] = "9.5"
    metrics[2] = ",".join(row)
    (out / "sft" / "metrics.csv").write_text("\n".join(metrics) + "\n")
    result = run_cli("reproduce", str(out), "--stage", "sft", "--out", str(tmp_path / "third"))
    assert result.returncode == 1
    assert "stage sft: weights DIFFER" in result.stdout
    assert "first logged step whose loss differs: step 1 (original '9.5'" in result.stdout
    assert "versions.torch: '2.0.0' -> " in result.stdout
    assert "NOT reproduced" in result.stdout
    # only the stage asked for was trained; the others' models were copied in as its inputs
    assert not (tmp_path / "third" / "pretrain-128" / "manifest.json").exists()


def test_stages_that_started_in_the_same_second_keep_their_variant_order(tmp_path):
    from moxin_core.training.reproduce import stage_manifests

    record = {"name": "v", "stages": [{"name": n} for n in ("pretrain-128", "pretrain-256",
                                                            "enhance")]}
    for name, started in (("pretrain-128", "2026-01-01T00:00:01+00:00"),
                          ("pretrain-256", "2026-01-01T00:00:02+00:00"),
                          ("enhance", "2026-01-01T00:00:02+00:00")):  # a tie, second precision
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps(
            {"started_at": started, "variant_record": record}))
    assert [f.name for f, _ in stage_manifests(tmp_path)] == ["pretrain-128", "pretrain-256",
                                                              "enhance"]


def test_reproduce_refuses_what_it_cannot_rerun(reference_run, tmp_path):
    assert_clean_error(run_cli("reproduce", str(tmp_path / "missing")), "is not a folder")
    assert_clean_error(run_cli("reproduce", str(tmp_path)), "no stage manifests")
    run = tmp_path / "unfinished"
    shutil.copytree(reference_run, run)
    manifest = _manifest(run)
    manifest["status"] = "running"
    (run / STAGE / "manifest.json").write_text(json.dumps(manifest))
    assert_clean_error(run_cli("reproduce", str(run)), STAGE, "did not complete", "--resume")
    assert_clean_error(run_cli("reproduce", str(reference_run), "--stage", "nope"),
                       "no stage 'nope'", STAGE)


# -- the openness report ------------------------------------------------------------------------

def test_the_openness_report_marks_only_what_is_there(reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    stage = run / STAGE

    def components(folder: Path) -> dict[str, bool]:
        data = json.loads((folder / "mof.json").read_text())
        assert data["present"] == sum(c["present"] for c in data["components"])
        return {c["name"]: c["present"] for c in data["components"]}

    written = components(reference_run / STAGE / "hf")  # written by the run itself
    for name in ("Model architecture", "Model parameters (final)", "Training code",
                 "Model parameters (intermediate)", "Training data", "Configs", "Training logs",
                 "Inference code"):
        assert written[name], name
    for name in ("Model card", "Licences", "Research paper", "Data card",
                 "Evaluation results", "Evaluation code"):  # nothing wrote them: absent
        assert not written[name], name
    markdown = (reference_run / STAGE / "hf" / "MOF.md").read_text()
    assert "| Training logs | yes |" in markdown and "| Licences | no |" in markdown

    # remove the training logs and the checkpoints, add a licence: an export says so
    (stage / "metrics.csv").unlink()
    shutil.rmtree(stage / "checkpoints")
    result = run_cli("export", str(stage), "--format", "hf", "--out", str(tmp_path / "a"))
    assert result.returncode == 0, result.stderr[-2000:]
    again = components(tmp_path / "a")
    assert not again["Training logs"] and not again["Model parameters (intermediate)"]
    assert again["Training code"] and again["Configs"] and again["Model parameters (final)"]
    assert "| Training logs | no | pretrain-128: missing |" in (tmp_path / "a" / "MOF.md"
                                                                ).read_text()
    # a folder moxin knows nothing about: only what the folder itself holds
    plain = tmp_path / "plain"
    shutil.copytree(stage / "hf", plain)
    for name in ("MOF.md", "mof.json"):
        (plain / name).unlink()
    (plain / "LICENSE").write_text("Apache-2.0\n")
    result = run_cli("export", str(plain), "--format", "hf", "--out", str(tmp_path / "b"))
    assert result.returncode == 0, result.stderr[-2000:]
    bare = components(tmp_path / "b")
    assert bare["Model parameters (final)"] and not bare["Training code"]
    assert not bare["Licences"]  # the export folder has no LICENSE: the source's is not copied
