"""Several processes on this CPU (gloo): `moxin train` with DDP and FSDP, launched by Lightning's
own launcher and by torchrun.

* ranks see disjoint examples, and 2 ranks x micro-batch b train on exactly the examples of
  1 rank x micro-batch 2b: the same loss trajectory and final weights, within 1e-5 (fp32 sums in
  another order);
* a 2-rank run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one (DDP
  and FSDP);
* torchrun and Lightning's launcher give the same run;
* FSDP shards every parameter and its export equals the gathered checkpoint weights.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from moxin_core.reporting import sha256_file
from tests.conftest import (REPO, install_distributions, plugin_distribution, plugin_path_env,
                            subprocess_env)

pytestmark = pytest.mark.slow

STAGE = "pretrain-128"
#: records, per rank, a hash of every example row trained on, and whether parameters are sharded
PROBE = '''
import hashlib, json
import lightning.pytorch as pl
from moxin_core.api import hookimpl


class Probe(pl.Callback):
    def __init__(self, out_dir):
        self.out_dir = out_dir

    def on_train_start(self, trainer, pl_module):
        params = list(pl_module.model.parameters())
        local = [p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params]
        (self.out_dir / f"params-{trainer.global_rank}.json").write_text(json.dumps(
            {"types": sorted({type(p).__name__ for p in params}),
             "local": sum(local), "total": sum(p.numel() for p in params)}))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        rows = [hashlib.sha256(str(r).encode()).hexdigest()[:16]
                for r in batch["input_ids"].tolist()]
        with open(self.out_dir / f"seen-{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps({"step": trainer.global_step, "rows": rows}) + "\\n")


@hookimpl
def moxin_callbacks(stage, out_dir):
    return [Probe(out_dir)]
'''


@pytest.fixture(scope="module")
def probe_env(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("probe")
    target = install_distributions(
        [plugin_distribution(root, "moxin-plugin-probe", "moxin_plugin_probe", PROBE)],
        root / "site")
    return plugin_path_env(target)


def _settings(tokenizer, model="moxin-nano", micro_batch=2, **extra) -> list[str]:
    settings = {f"{STAGE}.model": model, "seq_len": 64, "micro_batch_size": micro_batch,
                "warmup_steps": 2, "checkpoint_every": 2, "keep_checkpoints": 2,
                "tokenizer": tokenizer, "accelerator": "cpu", **extra}
    return sum((["--set", f"{k}={v}"] for k, v in settings.items()), [])


def _command(out, tokenizer, steps=6, torchrun=False, resume=False, **settings) -> list[str]:
    cli = ["-m", "moxin_core.cli", "train", "moxin-tiny-base", "--out", str(out), "--stage",
           STAGE, "--max-steps", str(steps), *_settings(tokenizer, **settings)]
    cli += ["--resume"] if resume else []
    if torchrun:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-port", "29571", *cli]
    return [sys.executable, *cli]


def _run(command, extra_env=None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(extra_env),
                            cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _losses(stage_dir: Path) -> list[float]:
    with open(stage_dir / "metrics.csv") as handle:
        return [float(row["train/loss"]) for row in csv.DictReader(handle)]


def _seen(stage_dir: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / f"seen-{rank}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory, nano_tokenizer, probe_env):
    root = tmp_path_factory.mktemp("ddp")
    _run(_command(root / "one", nano_tokenizer, micro_batch=4), probe_env)
    _run(_command(root / "two", nano_tokenizer, devices=2, strategy="ddp"), probe_env)
    return root


def test_ranks_see_disjoint_examples_that_make_the_one_rank_batches(ddp_runs):
    one, two = ddp_runs / "one" / STAGE, ddp_runs / "two" / STAGE
    rank0, rank1, single = _seen(two, 0), _seen(two, 1), _seen(one, 0)
    assert len(rank0) == len(rank1) == len(single) == 6
    for a, b, whole in zip(rank0, rank1, single):
        assert not set(a["rows"]) & set(b["rows"])  # disjoint within the step
        assert a["rows"] + b["rows"] == whole["rows"]  # rank 0's half, then rank 1's
    seen = [r for step in rank0 + rank1 for r in step["rows"]]
    assert len(seen) == len(set(seen))  # and across steps: each example once


def test_two_ranks_with_batch_b_train_as_one_rank_with_2b(ddp_runs):
    one, two = ddp_runs / "one" / STAGE, ddp_runs / "two" / STAGE
    torch.testing.assert_close(torch.tensor(_losses(two)), torch.tensor(_losses(one)),
                               atol=1e-5, rtol=0)
    a, b = load_file(one / "hf" / "model.safetensors"), load_file(two / "hf" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=0, msg=name)
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (one, two)]
    assert [m["world_size"] for m in manifests] == [1, 2]
    assert manifests[0]["tokens"] == manifests[1]["tokens"] == 6 * 4 * 64  # all ranks counted
    assert manifests[1]["tokens_per_second"] > 0


def test_torchrun_launch_gives_the_same_run(ddp_runs, nano_tokenizer, probe_env, tmp_path):
    result = _run(_command(tmp_path / "torchrun", nano_tokenizer, torchrun=True, devices=2,
                           strategy="ddp"), probe_env)
    assert "on 2 ranks" in result.stdout
    assert result.stdout.count("stage pretrain-128:") == 1  # rank 0 reports, once
    assert sha256_file(tmp_path / "torchrun" / STAGE / "hf" / "model.safetensors") == \
        sha256_file(ddp_runs / "two" / STAGE / "hf" / "model.safetensors")


def _kill_and_resume(out, tokenizer, steps, marker_step, **settings) -> str:
    command = _command(out, tokenizer, steps=steps, **settings)
    # its own process group: the launcher's child ranks die with it
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=subprocess_env(), cwd=REPO, start_new_session=True)
    marker = out / STAGE / "checkpoints" / f"step={marker_step:06d}.ckpt"
    deadline = time.time() + 600
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert marker.exists(), "the run ended before it could be killed"
    assert not (out / STAGE / "hf").exists(), "the run finished before the kill"
    resumed = _run(_command(out, tokenizer, steps=steps, resume=True, **settings))
    assert "Resuming stage 'pretrain-128' from" in resumed.stdout
    assert len(_losses(out / STAGE)) == steps  # every step's metrics row, once
    return sha256_file(out / STAGE / "hf" / "model.safetensors")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_rank_run_killed_and_resumed_is_bit_identical(strategy, tmp_path, nano_tokenizer):
    settings = {"model": "moxin-tiny", "devices": 2, "strategy": strategy,
                "checkpoint_every": 4}
    _run(_command(tmp_path / "full", nano_tokenizer, steps=24, **settings))
    reference = sha256_file(tmp_path / "full" / STAGE / "hf" / "model.safetensors")
    assert _kill_and_resume(tmp_path / "killed", nano_tokenizer, 24, 8, **settings) == reference


def test_fsdp_shards_the_model_and_exports_the_gathered_weights(tmp_path, nano_tokenizer,
                                                                 probe_env):
    _run(_command(tmp_path / "fsdp", nano_tokenizer, devices=2, strategy="fsdp"), probe_env)
    stage = tmp_path / "fsdp" / STAGE
    for rank in (0, 1):
        params = json.loads((stage / f"params-{rank}.json").read_text())
        assert params["types"] == ["DTensor"]
        assert params["local"] < 0.6 * params["total"]  # each rank holds about half
    exported = load_file(stage / "hf" / "model.safetensors")
    checkpoint = load_file(stage / "checkpoints" / "step=000006.ckpt" / "model.safetensors")
    assert set(checkpoint) == {f"model.{k}" for k in exported}
    assert all(torch.equal(exported[k], checkpoint[f"model.{k}"]) for k in exported)
    manifest = json.loads((stage / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["tokens"] == 6 * 4 * 64
    losses = _losses(stage)
    assert losses[-1] < losses[0]


def test_shutdown_leaves_the_process_group(tmp_path):
    """`moxin train` ends by leaving the process group (a gloo group alive at interpreter exit
    aborted a finished torchrun rank now and then)."""
    import torch.distributed as dist

    from moxin_core import distributed

    distributed.shutdown()  # no group: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    assert distributed.initialized()
    distributed.shutdown()
    assert not distributed.initialized()


def test_ddp_keeps_gradients_in_its_buckets():
    """moxin's ``ddp``: gradients are views into DDP's all-reduce buckets, not a second copy
    (``moxin plan`` counts no bucket buffer)."""
    from lightning.pytorch.strategies import DDPStrategy

    from moxin_core.strategies import build_strategy

    strategy = build_strategy("ddp")
    assert isinstance(strategy, DDPStrategy)
    assert strategy._ddp_kwargs == {"gradient_as_bucket_view": True}
    assert build_strategy("auto") == "auto"
