"""The LightningModule's contracts: the objective's context, frozen helper models, objective state
in checkpoints, meta-device construction under FSDP, and the shared log-prob utilities."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import pytest
import torch

from moxin_core.api import (CausalLM, DataSpec, HyperParameters, Registry, build_datamodule,
                            build_module, load_tokenizer, selective_log_softmax, sequence_logps)
from moxin_core.models.causal_lm import CausalLMFamily


class Recording(CausalLM):
    """The LM objective, recording what its context gives it and keeping a frozen copy."""

    def setup(self, context):
        super().setup(context)
        self.seen = {"processor": context.processor, "registry": context.registry,
                     "stage_dir": context.stage_dir, "hparams": context.hparams,
                     "trainer": context.trainer, "world_size": context.world_size,
                     "rank": context.rank, "model": context.model}
        context.add_frozen_model("start")
        self.steps = 0

    def on_fit_start(self):
        context = self.context
        self.first_batch = next(context.training_batches())
        self.start_device = next(context.frozen_model("start").parameters()).device

    def loss(self, model, batch):
        self.steps += 1
        return super().loss(model, batch)

    def state_dict(self):
        return {"steps": self.steps}

    def load_state_dict(self, state):
        self.steps = state["steps"]


def _fit(tmp_path, tokenizer_dir, objective, steps=2, **trainer_options):
    registry = Registry()
    tokenizer = load_tokenizer(tokenizer_dir)
    hparams = HyperParameters(max_steps=steps, seq_len=32, micro_batch_size=2,
                              precision="32-true")
    datamodule = build_datamodule(registry, [DataSpec("embedded")], objective, tokenizer, 32, 2)
    module = build_module(registry, "moxin-nano", objective, tokenizer, hparams,
                          lazy=trainer_options.pop("lazy", False), stage_dir=tmp_path)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, **trainer_options)
    trainer.fit(module, datamodule=datamodule)
    return module, trainer, datamodule, registry, tokenizer


def test_the_context_gives_the_run_and_frozen_models(tmp_path, nano_tokenizer):
    objective = Recording()
    module, trainer, datamodule, registry, tokenizer = _fit(tmp_path, nano_tokenizer, objective,
                                                            enable_checkpointing=False)
    seen = objective.seen
    assert seen["processor"] is tokenizer and seen["registry"] is registry
    assert seen["stage_dir"] == tmp_path and seen["trainer"] is trainer
    assert seen["hparams"].seq_len == 32 and (seen["world_size"], seen["rank"]) == (1, 0)
    assert seen["model"] is module.model
    # the look-ahead sees exactly the first training batch
    again = next(datamodule.iter_batches())
    assert torch.equal(objective.first_batch["input_ids"], again["input_ids"])
    # the frozen copy holds the starting weights, never trains, stays in eval mode
    start = module.frozen_model("start")
    assert not start.training and not any(p.requires_grad for p in start.parameters())
    trained = dict(module.model.named_parameters())
    assert any(not torch.equal(p, trained[n]) for n, p in start.named_parameters())
    assert objective.start_device == module.device
    # checkpoints leave it out and keep the objective's state
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert not any(k.startswith("frozen.") for k in checkpoint["state_dict"])
    assert checkpoint["moxin_objective"] == {"per_rank": [{"steps": 2}]}
    objective.steps = 0
    module.on_load_checkpoint(checkpoint)
    assert objective.steps == 2
    assert any(k.startswith("frozen.") for k in checkpoint["state_dict"])  # strict load works


def test_a_sharded_model_is_built_on_the_meta_device(tmp_path, nano_tokenizer, monkeypatch):
    """Under FSDP no rank builds the whole model: construction happens on the meta device and
    each rank materialises its shard."""
    import torch.distributed as dist

    from moxin_core.strategies import FSDP2Strategy

    devices = []
    build = CausalLMFamily.build

    def recording_build(self, config):
        devices.append(str(torch.get_default_device()))
        return build(self, config)

    monkeypatch.setattr(CausalLMFamily, "build", recording_build)
    saved = dict(os.environ)  # Lightning sets MASTER_*, RANK, WORLD_SIZE, ... in this process
    os.environ["MASTER_PORT"] = "29583"
    try:
        module, *_ = _fit(tmp_path, nano_tokenizer, CausalLM(), lazy=True,
                          strategy=FSDP2Strategy(), devices=1, enable_checkpointing=False)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)
    assert devices and set(devices) == {"meta"}
    parameters = list(module.model.parameters())
    assert {type(p).__name__ for p in parameters} == {"DTensor"}
    assert all(torch.isfinite(p.full_tensor()).all() for p in parameters)


class FreezeEmbeddings(CausalLM):
    """Chooses what trains in prepare_model: everything but the input embeddings."""

    def prepare_model(self, model):
        self.prepared = getattr(self, "prepared", 0) + 1
        self.kinds = {type(p).__name__ for p in model.parameters()}
        self.start = model.get_input_embeddings().weight.detach().clone()
        model.get_input_embeddings().requires_grad_(False)


@pytest.mark.parametrize("sharded", [False, True])
def test_prepare_model_chooses_what_trains_before_the_optimiser(tmp_path, nano_tokenizer,
                                                                sharded):
    import torch.distributed as dist

    from moxin_core.strategies import FSDP2Strategy

    objective = FreezeEmbeddings()
    options = {"lazy": True, "strategy": FSDP2Strategy(), "devices": 1} if sharded else {}
    saved = dict(os.environ)
    os.environ["MASTER_PORT"] = "29584"
    try:
        module, trainer, *_ = _fit(tmp_path, nano_tokenizer, objective, steps=3,
                                   enable_checkpointing=False, **options)
        embeddings = module.model.get_input_embeddings().weight
        lm_head = module.model.get_output_embeddings().weight
        optimised = {id(p) for group in trainer.optimizers[0].param_groups
                     for p in group["params"]}
        full = embeddings.full_tensor() if sharded else embeddings.detach()
        start = objective.start.full_tensor() if sharded else objective.start
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)
    # called once, with the model as it trains (sharded: DTensors already filled)
    assert objective.prepared == 1
    assert objective.kinds == ({"DTensor"} if sharded else {"Parameter"})
    assert torch.isfinite(start).all() and torch.equal(start, full)  # frozen: not trained
    assert id(embeddings) not in optimised and id(lm_head) in optimised


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_log_softmax_equals_the_full_log_softmax(dtype):
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 7, 50, generator=generator) * 4).to(dtype)
    index = torch.randint(0, 50, (3, 7), generator=generator)
    expected = torch.log_softmax(logits.float(), -1).gather(-1, index[..., None])[..., 0]
    got = selective_log_softmax(logits, index)
    assert got.shape == (3, 7) and got.dtype == (dtype if dtype == torch.float32 else torch.float32)
    torch.testing.assert_close(got.float(), expected, atol=1e-5, rtol=1e-5)


def test_sequence_logps_sums_the_completion_tokens_only():
    class Fixed(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, use_cache=False):
            generator = torch.Generator().manual_seed(1)
            logits = torch.randn(*input_ids.shape, 11, generator=generator)
            return type("Out", (), {"logits": logits})()

    ids = torch.tensor([[1, 4, 5, 6, 2], [1, 7, 8, 0, 0]])
    completion = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]]).bool()
    total, count = sequence_logps(Fixed(), ids, torch.ones_like(ids), completion)
    token_logps = torch.log_softmax(Fixed()(ids).logits, -1)
    row0 = sum(token_logps[0, t - 1, ids[0, t]] for t in (2, 3, 4))
    row1 = sum(token_logps[1, t - 1, ids[1, t]] for t in (1, 2))
    torch.testing.assert_close(total, torch.stack([row0, row1]))
    assert count.tolist() == [3.0, 2.0]
