"""No host-device synchronisation between logging steps (issue 15): a stage turns device tensors
into Python numbers only every ``log_every`` steps, and the non-finite guard of a fused AdamW
works on the device (skipping a bad step there) and is read at logging steps.

On the CPU a conversion costs nothing, but it is where a GPU run would wait for the device: the
tests count them (``aten._local_scalar_dense``, what ``.item()``, ``float()`` and ``bool()`` of a
tensor call) with a dispatch mode. AdamW is fused here as it is on CUDA (PyTorch has a fused CPU
kernel too), so the on-device guard runs."""

from __future__ import annotations

import json
import sys

import lightning.pytorch as pl
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import moxin_core.module as module_mod
from moxin_core import faults
from moxin_core import hookimpl
from moxin_core.errors import MoxinError
from moxin_core.training.stage import train_variant
from tests.conftest import NANO_SETS

STAGE = "pretrain-128"
CONVERSIONS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default}


#: where a conversion does not wait for the device:
HOST_SIDE = {
    # the batch is still on the CPU: built (collate: the loader's iter_stream) and counted
    # (MoxinDataModule.on_before_batch_transfer) before it moves to the device
    "iter_stream", "on_before_batch_transfer",
}
#: transformers' own questions at each forward of an uncompiled model: whether a batch given
#: packed position ids holds one sequence per row, and (SDPA with a padding mask) whether the
#: mask masks anything. ``compile: true`` removes both (traced, it does not ask), and flex
#: attention, the CUDA default, does not ask the second. Not moxin's to remove; not counted.
TRANSFORMERS_OWN = {"find_packed_sequence_indices", "_ignore_causal_mask_sdpa"}


def _not_counted() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name in HOST_SIDE | TRANSFORMERS_OWN:
            return True
        frame = frame.f_back
    return False


class _CountConversions(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in CONVERSIONS and not _not_counted():
            self.count += 1
        return func(*args, **(kwargs or {}))


class _PerStep(pl.Callback):
    """Conversions per optimizer step: from the start of its first micro-batch to the start of
    the next step's (so the end-of-step work of the module and of Lightning's loggers counts
    to the step that did it)."""

    def __init__(self, counter: _CountConversions) -> None:
        self.counter, self.last, self.per_step = counter, None, []

    def _cut(self) -> None:
        if self.last is not None:
            self.per_step.append(self.counter.count - self.last)
        self.last = self.counter.count

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx % trainer.accumulate_grad_batches == 0:
            self._cut()

    def on_train_end(self, trainer, pl_module):
        self._cut()


@pytest.fixture
def fused_adamw(monkeypatch):
    """build_optimizer with the fused kernel, as on CUDA."""
    def fused(model, hp):
        return torch.optim.AdamW(module_mod.optimizer_groups(model, hp.weight_decay), lr=hp.lr,
                                 betas=(hp.adam_beta1, hp.adam_beta2), eps=hp.adam_eps,
                                 fused=True)

    monkeypatch.setattr(module_mod, "build_optimizer", fused)


def _run(out, tokenizer, register, *sets, steps=8, variant="moxin-tiny-base", stage=STAGE):
    counter = _CountConversions()
    per_step = _PerStep(counter)

    class Plugin:
        @hookimpl
        def moxin_callbacks(self, stage, out_dir):
            return [per_step]

    base = [*NANO_SETS, f"tokenizer={tokenizer}"] if variant == "moxin-tiny-base" else []
    with counter:
        (result,) = train_variant(variant, out, stage=stage, max_steps=steps,
                                  sets=[*base, *sets], registry=register(Plugin()))
    return result, per_step.per_step


def test_steps_between_logging_steps_never_wait_for_the_device(fused_adamw, nano_tokenizer,
                                                               tmp_path, moxin_register):
    result, per_step = _run(tmp_path / "a", nano_tokenizer, moxin_register, "log_every=4",
                            "grad_accum=2", "checkpoint_every=100")
    assert result.steps == 8 and len(per_step) == 8
    logging = {0, 3, 7}  # the first, steps 4 and 8 (0-based 3 and 7); 8 is also the last
    assert all(n == 0 for i, n in enumerate(per_step) if i not in logging), per_step
    assert all(per_step[i] > 0 for i in logging), per_step  # the counter does see them
    steps = [int(r.split(",")[0]) for r in
             (tmp_path / "a" / STAGE / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == [0, 3, 7]  # metrics.csv has the logged steps


@pytest.mark.parametrize("stage,options", [
    ("sft", ["sft.data=[{source: embedded_instructions, num_examples: 100}]"]),
    ("dpo", ["dpo.data=[{source: embedded_preferences, num_examples: 60}]",
             "dpo.objective_options.reference=precomputed"]),
    ("dpo", ["dpo.data=[{source: embedded_preferences, num_examples: 60}]",
             "dpo.objective_options.reference=model"])])
def test_sft_and_dpo_steps_between_logging_steps_never_wait_either(
        stage, options, fused_adamw, moxin_model_folder, tmp_path, moxin_register):
    result, per_step = _run(tmp_path / "i", None, moxin_register, f"{stage}.model="
                            f"{moxin_model_folder}", "seq_len=96", "micro_batch_size=2",
                            "log_every=3", "checkpoint_every=100", f"{stage}.evaluators=[]",
                            *options, steps=6, variant="moxin-tiny-instruct", stage=stage)
    assert result.steps == 6 and len(per_step) == 6
    assert all(n == 0 for i, n in enumerate(per_step) if i not in (0, 2, 5)), per_step


def test_without_the_fused_kernel_the_guard_checks_on_the_host_every_step(nano_tokenizer,
                                                                          tmp_path,
                                                                          moxin_register):
    """The CPU default (unfused AdamW): the guard reads each step's flag on the host, which the
    counter sees; what the test above asserts is not vacuous."""
    _, per_step = _run(tmp_path / "b", nano_tokenizer, moxin_register, "log_every=4",
                       "checkpoint_every=100", steps=4)
    assert all(n > 0 for n in per_step), per_step


def test_the_device_guard_skips_a_bad_step_and_counts_it(fused_adamw, nano_tokenizer, tmp_path,
                                                         moxin_register, monkeypatch):
    monkeypatch.setattr(faults, "_hits", {})  # hits counted from this run on
    monkeypatch.setenv("MOXIN_FAULTS", "gradient@3:nan")
    result, _ = _run(tmp_path / "c", nano_tokenizer, moxin_register, "nonfinite=skip",
                     "log_every=2", "checkpoint_every=100", steps=6)
    manifest = json.loads((tmp_path / "c" / STAGE / "manifest.json").read_text())
    assert manifest["skipped_steps"] == 1
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "c" / STAGE / "hf" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.parametrize("fault,what", [("gradient@2:nan", "gradient"), ("loss@2:nan", "loss")])
def test_the_device_guard_stops_naming_the_first_bad_step(fault, what, fused_adamw,
                                                          nano_tokenizer, tmp_path,
                                                          moxin_register, monkeypatch):
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv("MOXIN_FAULTS", fault)
    with pytest.raises(MoxinError, match=f"Non-finite {what} at optimizer step 1"):
        _run(tmp_path / "d", nano_tokenizer, moxin_register, "log_every=3",
             "checkpoint_every=100", steps=6)


def test_the_throughput_monitor_waits_for_the_gpu_only_at_logging_steps(nano_tokenizer,
                                                                        tmp_path, monkeypatch,
                                                                        moxin_register):
    """Lightning's monitor synchronises the GPU after every micro-batch; moxin's only at the
    logging steps (and once where its own tokens/s starts counting). The GPU is stood in for:
    the monitor is told it runs on one, and the synchronisations are counted."""
    from moxin_core.callbacks import TokenThroughput

    calls = []
    monkeypatch.setattr(TokenThroughput, "_waits_for_gpu", staticmethod(lambda trainer: True))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: calls.append(1))
    result, _ = _run(tmp_path / "t", nano_tokenizer, moxin_register, "log_every=4",
                     "checkpoint_every=100", steps=8)
    assert result.steps == 8
    # steps 0, 3 and 7 log; the 2nd micro-batch ends the warm-up: 4, not 8
    assert len(calls) == 4, len(calls)
    assert result.tokens_per_second > 0
