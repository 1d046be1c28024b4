"""LoRA through peft (``--set lora.r=8``): settings, a trained stage's adapters, frozen base,
merged export, adapter-only checkpoints, the adapter-disabled reference and exact resume."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from moxin_core.errors import MoxinError
from moxin_core.reporting import sha256_file
from moxin_core.testing import ContractError, check_lora_stage
from moxin_core.variants import Variant, Stage, DataSpec, apply_overrides
from tests.conftest import NANO_SETS, assert_clean_error, run_cli

STAGE = "pretrain-128"


def _variant() -> Variant:
    return Variant("v", [Stage("a", "lm", [DataSpec("embedded")]),
                         Stage("b", "lm", [DataSpec("embedded")])])


def test_lora_settings_are_set_per_entry_or_whole_and_checked():
    variant = _variant()
    apply_overrides(variant, {"lora.r": "16", "b.lora.dropout": "0.1"}, "--set")
    assert variant.stage("a").hparams.lora == {"r": 16}
    assert variant.stage("b").hparams.lora == {"r": 16, "dropout": 0.1}
    apply_overrides(variant, {"a.lora": "{r: 4, targets: [q_proj, v_proj]}"}, "--set")
    assert variant.stage("a").hparams.lora == {"r": 4, "targets": ["q_proj", "v_proj"]}
    variant.stage("a").hparams.validate("stage a")
    for bad, fragment in [({"rank": 4}, "lora has no setting rank"),
                          ({"r": -1}, "lora.r must be an integer >= 0"),
                          ({"r": 4, "quantize": "int8"}, "lora.quantize must be nf4"),
                          ({"r": 4, "dropout": 1.5}, "lora.dropout must be in [0, 1)"),
                          ({"r": 4, "targets": []}, "lora.targets must be all-linear")]:
        hp = variant.stage("b").hparams
        hp.lora = bad
        with pytest.raises(MoxinError, match=fragment.replace("[", r"\[").replace(")", r"\)")):
            hp.validate("stage b")
    with pytest.raises(MoxinError, match="must be a mapping"):
        apply_overrides(variant, {"lora": "16"}, "--set")


def _train(out: Path, tokenizer: Path, steps: int, *sets: str, faults: str | None = None,
           resume: bool = False):
    settings = [*NANO_SETS, f"tokenizer={tokenizer}", "precision=32-true", *sets]
    args = ["train", "moxin-tiny-base", "--out", str(out), "--stage", STAGE, "--max-steps",
            str(steps), *sum((["--set", s] for s in settings), [])]
    return run_cli(*args, *(["--resume"] if resume else []),
                   env={"MOXIN_FAULTS": faults} if faults else None)


@pytest.fixture(scope="module")
def start_folder(nano_tokenizer, tmp_path_factory) -> Path:
    """A briefly trained nano model: where the LoRA stages start."""
    out = tmp_path_factory.mktemp("lora-start")
    result = _train(out, nano_tokenizer, 2)
    assert result.returncode == 0, result.stderr[-2000:]
    return out / STAGE / "hf"


@pytest.fixture(scope="module")
def lora_run(nano_tokenizer, start_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora")
    result = _train(out, nano_tokenizer, 6, f"{STAGE}.model={start_folder}", "lora.r=8",
                    "lr=0.01", "checkpoint_every=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Name or service" not in result.stderr
    return out


def _lora_module(start_folder: Path, objective=None, **hparams):
    """A MoxinModule training ``objective`` (default ``lm``) with LoRA from ``start_folder``:
    (module, the starting model, the tokenizer)."""
    from moxin_core.api import Registry, build_module, build_objective
    from moxin_core.models.loading import load_model
    from moxin_core.variants import HyperParameters

    registry = Registry()
    start, tokenizer, _ = load_model(start_folder, registry)
    settings = {"seq_len": 32, "precision": "32-true", "lora": {"r": 4}, **hparams}
    objective = objective or build_objective(registry, "lm", {})
    module = build_module(registry, str(start_folder), objective, tokenizer,
                          HyperParameters(**settings))
    return module, start, tokenizer


def _fit(module, tokenizer, steps: int) -> None:
    """A real Lightning fit of ``module`` on the embedded corpus, 2 x 32 tokens per step."""
    import lightning.pytorch as pl

    from moxin_core.api import Registry, build_datamodule

    data = build_datamodule(Registry(), [DataSpec("embedded")], module.objective, tokenizer,
                            32, 2)
    pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False,
               precision=module.train_hparams.precision).fit(module, datamodule=data)


def test_a_lora_stage_trains_adapters_on_a_frozen_base_and_merges_them(lora_run, start_folder):
    facts = check_lora_stage(lora_run / STAGE, start_folder)
    config = facts["adapter_config"]
    assert config["r"] == 8 and config["lora_alpha"] == 16  # alpha defaults to 2r
    assert config["base_model_name_or_path"] == str(start_folder)
    # every linear layer but the head: 7 per decoder layer
    targets = {t.rsplit(".", 1)[-1] for t in config["target_modules"]}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                       "down_proj"}
    assert all(name.endswith("proj.weight") for name in facts["adapted"]) and facts["adapted"]
    manifest = json.loads((lora_run / STAGE / "manifest.json").read_text())
    assert manifest["hparams"]["lora"] == {"r": 8}
    # the checkpoints hold only adapters: far smaller than the model
    ckpt = sorted((lora_run / STAGE / "checkpoints").iterdir())[-1]
    model_bytes = (lora_run / STAGE / "hf" / "model.safetensors").stat().st_size
    assert (ckpt / "model.safetensors").stat().st_size < model_bytes / 5


def test_the_lora_check_fails_on_a_stage_that_trained_every_weight(start_folder):
    with pytest.raises(ContractError, match="lora-adapter"):
        check_lora_stage(start_folder.parent, start_folder)


def test_the_lora_reference_is_the_trained_model_with_its_adapters_off(start_folder,
                                                                       nano_tokenizer):
    """No frozen copy: the reference shares the trained model's weights, and gives the starting
    model's outputs whatever the adapters learnt."""
    module, start, tokenizer = _lora_module(start_folder, max_steps=3, micro_batch_size=2,
                                            lr=0.05, warmup_steps=0)
    module.add_frozen_model("reference")
    assert len(module.frozen) == 0  # nothing copied
    _fit(module, tokenizer, 3)
    reference = module.frozen_model("reference")
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        policy = module.model(input_ids=ids).logits
        ref = reference(input_ids=ids).logits
        want = start(input_ids=ids).logits
    torch.testing.assert_close(ref, want, atol=1e-5, rtol=1e-5)
    assert (policy - want).abs().max() > 1e-3  # the adapters did learn something
    assert sum(p.numel() for p in reference.parameters()) == 0  # owns no weights


def test_qlora_trains_on_a_4bit_base_and_merges_into_full_precision(nano_tokenizer, tmp_path,
                                                                     start_folder):
    import bitsandbytes as bnb

    module, _, _ = _lora_module(start_folder, lora={"r": 4, "quantize": "nf4"})
    module._prepare_model()  # what configure_model does when the fit starts
    quantized = [m for m in module.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 7 * 2  # every projection of both decoder layers, not the head
    result = _train(tmp_path, nano_tokenizer, 4, f"{STAGE}.model={start_folder}", "lora.r=8",
                    "lora.quantize=nf4", "lr=0.01")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kernels-community" not in result.stderr
    # hf/ is the full-precision start with the adapters merged: equal to the unmerged adapters
    # on the full-precision start (not on the 4-bit base, which only approximates it)
    check_lora_stage(tmp_path / STAGE, start_folder)


@pytest.mark.slow
def test_sigkill_then_resume_of_a_lora_stage_is_bit_identical(lora_run, nano_tokenizer,
                                                              start_folder, tmp_path):
    """The checkpoints hold only adapters; resuming rebuilds the base and continues exactly."""
    out = tmp_path / "run"
    sets = (f"{STAGE}.model={start_folder}", "lora.r=8", "lr=0.01", "checkpoint_every=2")
    killed = _train(out, nano_tokenizer, 6, *sets, faults="micro-batch@4")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = _train(out, nano_tokenizer, 6, *sets, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("hf/model.safetensors", "adapter/adapter_model.safetensors"):
        assert sha256_file(out / STAGE / name) == sha256_file(lora_run / STAGE / name), name


@pytest.mark.slow
def test_sigkill_then_resume_of_a_qlora_stage_is_bit_identical(nano_tokenizer, start_folder,
                                                               tmp_path):
    """A 4-bit base's state has keys its own loading does not take; the adapter-only
    checkpoint still resumes, exactly."""
    sets = (f"{STAGE}.model={start_folder}", "lora.r=8", "lora.quantize=nf4", "lr=0.01",
            "checkpoint_every=2")
    whole = _train(tmp_path / "whole", nano_tokenizer, 6, *sets)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _train(tmp_path / "run", nano_tokenizer, 6, *sets, faults="micro-batch@4")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = _train(tmp_path / "run", nano_tokenizer, 6, *sets, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ("hf/model.safetensors", "adapter/adapter_model.safetensors"):
        assert sha256_file(tmp_path / "run" / STAGE / name) == \
            sha256_file(tmp_path / "whole" / STAGE / name), name


def test_under_bf16_true_the_adapters_train_in_fp32(start_folder):
    """bf16-true casts the whole module to bf16; the adapters go back to fp32 (with their AdamW
    state) before the optimizer is built, so small updates are not rounded away."""
    module, _, tokenizer = _lora_module(start_folder, max_steps=2, micro_batch_size=2,
                                        lr=0.01, precision="bf16-true", warmup_steps=0)
    _fit(module, tokenizer, 2)
    dtypes = {p.dtype for n, p in module.model.named_parameters() if "lora_" in n}
    base = {p.dtype for n, p in module.model.named_parameters() if "lora_" not in n}
    assert dtypes == {torch.float32} and base == {torch.bfloat16}
    assert all(p.abs().max() > 0 for n, p in module.model.named_parameters() if "lora_B" in n)


def test_lora_under_fsdp_and_an_unfinished_lora_export_say_what_to_do(nano_tokenizer,
                                                                      tmp_path, start_folder):
    result = _train(tmp_path / "a", nano_tokenizer, 2, f"{STAGE}.model={start_folder}",
                    "lora.r=4", "strategy=fsdp")
    assert_clean_error(result, "LoRA does not run under a sharding strategy", "strategy=ddp")
    killed = _train(tmp_path / "b", nano_tokenizer, 4, f"{STAGE}.model={start_folder}",
                    "lora.r=4", "checkpoint_every=2", faults="micro-batch@4")
    assert killed.returncode == -signal.SIGKILL
    export = run_cli("export", str(tmp_path / "b" / STAGE), "--out", str(tmp_path / "x"))
    assert_clean_error(export, "LoRA adapters only", "--resume")


def test_an_objective_that_unfreezes_base_weights_is_refused_under_lora(start_folder):
    """LoRA promises a frozen base; an objective choosing its own trainable weights in
    prepare_model (the VLM objective does) would break that silently: an error instead."""
    from moxin_core.objectives.lm import CausalLM

    class Unfreezing(CausalLM):
        name = "unfreezing"

        def prepare_model(self, model):
            model.get_output_embeddings().requires_grad_(True)

    module, _, _ = _lora_module(start_folder, Unfreezing())
    with pytest.raises(MoxinError, match="'unfreezing' makes weights of the base train too"):
        module._prepare_model()
    plain, _, _ = _lora_module(start_folder, CausalLM())
    plain._prepare_model()  # the lm objective leaves the adapters alone: no error
    assert all("lora_" in n for n, p in plain.model.named_parameters() if p.requires_grad)
