"""The generic LightningModule: holds the model, frozen helpers, and delegates the loss.

The model comes either built (``MoxinModule(model, ...)``) or as a :class:`ModelRecipe` that
``configure_model`` builds when the fit starts: under a sharding strategy (``fsdp``) on the meta
device, sharded block by block, then materialised shard by shard, so no rank ever holds the whole
model in fp32.
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from transformers import get_scheduler

from moxin_core import distributed
from moxin_core.callbacks import logging_step
from moxin_core.errors import MoxinError
from moxin_core.faults import fault_point
from moxin_core.lora import (AdapterDisabled, apply_lora, check_only_adapters_train,
                             lora_settings)
from moxin_core.models.family import ModelFamily
from moxin_core.objectives.base import Objective
from moxin_core.objectives.context import ObjectiveContext
from moxin_core.strategies import is_sharded, shard
from moxin_core.variants import HyperParameters

FROZEN = "frozen"  # the ModuleDict of frozen helper models; excluded from checkpoints


class NonFiniteError(MoxinError):
    """A loss or gradient was NaN/Inf and the stage's ``nonfinite`` setting is ``stop``;
    ``moxin train`` adds the last good checkpoint to the message."""

    def __init__(self, step: int, what: str) -> None:
        self.step, self.what = step, what
        super().__init__(f"Non-finite {what} at optimizer step {step}: training stopped before "
                         "the step changed any weight. Lower the learning rate, check the data, "
                         "or set nonfinite=skip to skip such steps (they are counted).")


class _SkipStep(Exception):
    """Raised before an optimizer step whose gradients are not finite (``nonfinite: skip``)."""


def _grads_finite(model: torch.nn.Module) -> bool:
    """Whether every gradient of ``model`` is finite (one reduction, one device sync)."""
    grads = []
    for p in model.parameters():
        if p.grad is not None:
            grad = p.grad
            grads.append(grad.to_local() if hasattr(grad, "to_local") else grad)
    if not grads:
        return True
    return bool(torch.isfinite(torch.stack([g.float().abs().sum() for g in grads]).sum()))


def _weights_in(param: torch.nn.Parameter) -> int:
    """The weights a parameter holds (a bitsandbytes 4-bit one packs two per byte)."""
    state = getattr(param, "quant_state", None)
    shape = getattr(state, "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else param.numel()


def _has_flex_attention() -> bool:
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


def choose_attention(requested: str, device_type: str) -> str | None:
    """The attention kernel for training on ``device_type``: ``auto`` is flex attention on CUDA
    (a document block mask from the packed position ids, no dense 4-D mask) and the model's
    default (SDPA) elsewhere (None: leave the model as built)."""
    if requested == "auto":
        if device_type == "cuda" and _has_flex_attention():
            return "flex_attention"
        return None
    if requested == "flex_attention" and device_type == "cpu":
        raise MoxinError(f"attention=flex_attention cannot train on the CPU: PyTorch "
                         f"{torch.__version__} has no backward pass for flex attention there. "
                         "Use attention=auto (SDPA on the CPU) or sdpa.")
    if requested == "flash_attention_2":
        if importlib.util.find_spec("flash_attn") is None:
            raise MoxinError("attention=flash_attention_2 needs the flash-attn package "
                             "(pip install flash-attn, on a CUDA machine); or use "
                             "attention=auto.")
    return requested


def set_attention(model: torch.nn.Module, name: str | None, requested: str = "auto") -> None:
    """Switch a transformers model to the attention kernel ``name``; a model that cannot switch
    keeps its own unless the kernel was ``requested`` by name."""
    if name is None:
        return
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None:
        if requested == "auto":
            return
        raise MoxinError(f"attention={name}: {type(model).__name__} cannot switch its attention "
                         "kernel (a transformers model can); use attention=auto.")
    setter(name)


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: no decay on norms, biases and other 1-D parameters."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, hp: HyperParameters) -> torch.optim.Optimizer:
    """AdamW as moxin uses it (also used by the bare-loop benchmark, so both compare equal)."""
    groups = optimizer_groups(model, hp.weight_decay)
    # the fused CUDA kernel: one launch for every parameter's update instead of a few per tensor
    # (not under 16-mixed with clipping: the fused step unscales gradients itself, and Lightning
    # cannot clip gradients it has not unscaled)
    fused = all(p.is_cuda for g in groups for p in g["params"]) and any(
        g["params"] for g in groups) and not (hp.precision == "16-mixed" and hp.grad_clip)
    return torch.optim.AdamW(groups, lr=hp.lr, betas=(hp.adam_beta1, hp.adam_beta2),
                             eps=hp.adam_eps, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, hp: HyperParameters):
    """Warmup then cosine (to ``min_lr_ratio``), linear (to 0) or constant, per optimizer step."""
    if hp.schedule == "cosine":
        return get_scheduler("cosine_with_min_lr", optimizer, hp.total_warmup_steps, hp.max_steps,
                             scheduler_specific_kwargs={"min_lr_rate": hp.min_lr_ratio})
    name = "linear" if hp.schedule == "linear" else "constant_with_warmup"
    return get_scheduler(name, optimizer, hp.total_warmup_steps, hp.max_steps)


@dataclass
class ModelRecipe:
    """How to build the model a stage starts from: eagerly, or empty for sharding.

    Args:
        family: the model's family.
        config: the (fitted) config to build from.
        source: a folder or hub id whose weights to load; None: random weights.
        seed: the seed random weights are drawn with (the same weights every time).
    """

    family: ModelFamily
    config: Any
    source: str | None = None
    seed: int = 0

    def build(self) -> torch.nn.Module:
        """The model with its starting weights, in fp32 on the CPU."""
        if self.source is not None:
            return self.family.load(self.source)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return self.family.build(self.config).train()

    def build_empty(self) -> torch.nn.Module:
        """The model on the meta device (no memory; :meth:`fill` after materialising)."""
        with torch.device("meta"):
            return self.family.build(self.config).train()

    def fill(self, model: torch.nn.Module) -> None:
        """Starting weights into a model materialised from :meth:`build_empty` (possibly
        sharded): random initialisation, then the source's weights, or those a preset inherits
        from the models it is built from (rank 0 reads them, the others receive them)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.family.init_weights(model)  # also computes non-persistent buffers
        reader = distributed.is_rank_zero()
        if self.source is not None:
            state = self.family.state_dict_for_loading(self.source) if reader else {}
            set_model_state_dict(model, state, options=StateDictOptions(
                full_state_dict=True, broadcast_from_rank0=distributed.initialized()))
        else:  # a preset: the weights it inherits from the models it is built from, if any
            state = self.family.start_state_dict(self.config) if reader else {}
            set_model_state_dict(model, state, options=StateDictOptions(
                full_state_dict=True, broadcast_from_rank0=distributed.initialized(),
                strict=False))


class MoxinModule(pl.LightningModule):
    """Trains ``model`` with ``objective``; everything objective-specific stays in the objective.

    Args:
        model: a built ``torch.nn.Module`` (a transformers causal LM, or any module the objective
            knows how to call), or a :class:`ModelRecipe` built in ``configure_model``.
        objective: the objective whose ``loss(model, batch)`` is minimised.
        hparams: optimiser and schedule settings (``HyperParameters``).
        processor: the model's processor, handed to the objective's context.
        registry: the run's registry, handed to the objective's context.
        stage_dir: the stage folder, handed to the objective's context.
        family: the model's family (needed to shard; taken from the recipe when there is one).
        recipe: how the model was built (a built ``model`` with its recipe: frozen copies of the
            starting model and sharding can rebuild it).
    """

    def __init__(self, model: torch.nn.Module | ModelRecipe, objective: Objective,
                 hparams: HyperParameters | None = None, processor: Any = None,
                 registry: Any = None, stage_dir: Any = None,
                 family: ModelFamily | None = None, recipe: ModelRecipe | None = None) -> None:
        super().__init__()
        if isinstance(model, ModelRecipe):
            model, recipe = None, model
        self.recipe = recipe
        self.model: torch.nn.Module | None = model
        self.family = family or (recipe.family if recipe is not None else None)
        self.objective = objective
        self.train_hparams = hparams or HyperParameters()
        self.processor, self.registry, self.stage_dir = processor, registry, stage_dir
        self.tokens_seen = 0
        self._batch_tokens = 0  # tokens of the micro-batch being trained
        self.frozen = torch.nn.ModuleDict()
        self._frozen_recipes: dict[str, ModelRecipe] = {}
        self._context: ObjectiveContext | None = None
        self._sharded = False  # configure_model sharded the models
        self._prepared = False  # the objective's prepare_model ran
        self.skipped_steps = 0  # optimizer steps skipped for non-finite gradients
        #: LoRA settings (hparams.lora filled in), None: every weight trains
        self.lora = lora_settings(self.train_hparams.lora)
        self._adapter_off: dict[str, AdapterDisabled] = {}  # LoRA references: adapters off
        # the non-finite guard on the device (a fused optimizer): flags kept as device tensors
        # and read at logging steps, so no step waits for the device to answer
        self._guard_on_device = False
        self._loss_bad: torch.Tensor | None = None  # this accumulation window's losses
        self._bad_steps: torch.Tensor | None = None  # optimizer steps skipped so far
        self._first_bad: torch.Tensor | None = None  # (step, 1 if the loss was bad) of the first

    # -- frozen helper models (registered through ObjectiveContext.add_frozen_model)
    def add_frozen_model(self, name: str, model: torch.nn.Module | None = None) -> None:
        if name in self.frozen or name in self._frozen_recipes or name in self._adapter_off:
            return  # setup runs once per fit; a second fit keeps the first registration
        if model is None and self.lora is not None:
            # the starting model is the trained one with its adapters off: no copy needed
            self._adapter_off[name] = AdapterDisabled(lambda: self.model)
            return
        if model is None:
            if self.model is not None:
                # not yet trained (setup precedes checkpoint restore): the starting weights
                model = copy.deepcopy(self.model)
            elif self.recipe is not None:
                self._frozen_recipes[name] = self.recipe
                return  # built with the trained model in configure_model
            else:
                raise MoxinError("add_frozen_model(name) without a model needs the model the "
                                 "stage starts from; register it in Objective.setup.")
        self.frozen[name] = model.eval().requires_grad_(False)

    def frozen_model(self, name: str) -> torch.nn.Module:
        if name in self._adapter_off:
            return self._adapter_off[name]
        if name not in self.frozen:
            raise MoxinError(f"No frozen model {name!r} is registered (known: "
                             f"{', '.join(self.frozen) or 'none'}); register it with "
                             "context.add_frozen_model in Objective.setup.")
        return self.frozen[name]

    # -- Lightning hooks
    def setup(self, stage: str) -> None:
        if self._context is None:
            self._context = ObjectiveContext(self, self.processor, self.registry, self.stage_dir)
            self.objective.setup(self._context)

    def configure_model(self) -> None:
        """Build what was given as a recipe (the model, frozen copies of it): eagerly, or under
        a sharding strategy on the meta device, sharded block by block, then materialised shard
        by shard (a built model is sharded as it is)."""
        if self._sharded:
            return
        if not is_sharded(self.trainer.strategy):
            if self.model is None:
                self.model = self.recipe.build()
            for name, recipe in self._frozen_recipes.items():
                self.frozen[name] = recipe.build().eval().requires_grad_(False)
            self._frozen_recipes.clear()
            self._prepare_model()
            return
        if self.lora is not None:
            raise MoxinError(f"lora with strategy={self.train_hparams.strategy}: LoRA does not "
                             "run under a sharding strategy yet (the adapters would not be "
                             "sharded with the base). Use strategy=ddp (the trainable part is "
                             "small), lora.quantize=nf4 to fit a larger base, or train without "
                             "lora.")
        if self.family is None:
            raise MoxinError("Sharding the model needs its family: build the module with "
                             "moxin_core.api.build_module, or pass family=.")
        empty = self.model is None
        if empty:
            self.model = self.recipe.build_empty()
        for name, recipe in self._frozen_recipes.items():
            self.frozen[name] = recipe.build_empty().eval()
        mesh = self.device_mesh["data_parallel"]
        for module in [self.model, *self.frozen.values()]:
            shard(module, self.family.block_types(module), mesh)
        device = self.trainer.strategy.root_device
        if empty:
            self.model.to_empty(device=device)
            self.recipe.fill(self.model)
        for name, recipe in self._frozen_recipes.items():
            self.frozen[name].to_empty(device=device)
            recipe.fill(self.frozen[name])
            self.frozen[name].requires_grad_(False)
        self._frozen_recipes.clear()
        self._sharded = True
        self._prepare_model()

    def _prepare_model(self) -> None:
        if not self._prepared:  # once per module, even when configure_model runs again
            device = self.trainer.strategy.root_device.type if self._trainer else "cpu"
            requested = self.train_hparams.attention
            kernel = choose_attention(requested, device)
            # frozen references too, so policy and reference compute alike at step 0
            for module in (self.model, *self.frozen.values()):
                set_attention(module, kernel, requested)
            if self.train_hparams.activation_checkpointing:
                enable = getattr(self.model, "gradient_checkpointing_enable", None)
                if enable is None:
                    raise MoxinError(f"activation_checkpointing: {type(self.model).__name__} "
                                     "has no gradient_checkpointing_enable (a transformers "
                                     "model has); set it to false.")
                enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if self.lora is not None:
                self.model = apply_lora(self.model, self.lora)
            self.objective.prepare_model(self.model)
            if self.lora is not None:
                check_only_adapters_train(self.model, self.objective.name)
            if self.train_hparams.compile:
                self.model.compile()  # in place: parameter names and checkpoints unchanged
                decoder = getattr(self.model, "get_decoder", None)
                if decoder is not None and decoder() is not self.model:
                    decoder().compile()  # also when called alone (the chunked-logits loss)
            self._prepared = True

    def on_fit_start(self) -> None:
        self.objective.on_fit_start()

    def train(self, mode: bool = True) -> MoxinModule:
        super().train(mode)
        self.frozen.eval()  # frozen helpers never train (a reference runs without dropout)
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def _logging_step(self) -> bool:
        return logging_step(self.global_step, self.train_hparams.log_every,
                            self.trainer.max_steps if self._trainer else self.global_step + 1)

    def _counted_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """The batch's tokens, as a MoxinDataModule counted them on the CPU before the batch
        moved to the device; else (a plain DataLoader, GRPO) asked of the objective now."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        counted = getattr(datamodule, "batch_tokens", None)
        if counted is None or self.objective.tokens_after_loss:
            return self.objective.num_tokens(batch)
        datamodule.batch_tokens = None
        return counted

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, metrics = self.objective.loss(self.model, batch)
        if fault_point("loss") == "nan":
            loss = loss * float("nan")
        if self._guard_on_device:
            bad = ~torch.isfinite(loss.detach()).reshape(())
            self._loss_bad = bad if self._loss_bad is None else self._loss_bad | bad
        elif self.train_hparams.nonfinite == "stop" and not torch.isfinite(loss.detach()):
            raise NonFiniteError(self.global_step, f"loss ({loss.item()})")
        # ``skip``: a non-finite loss makes non-finite gradients; the step is skipped there
        fault_point("micro-batch")  # after the forward pass, before the backward pass
        self._batch_tokens = self._counted_tokens(batch)
        self.tokens_seen += self._batch_tokens
        if not self._logging_step():
            return loss  # logging turns device tensors into numbers: only every log_every steps
        # on several ranks the logged values are averaged over them: the loss of the global
        # micro-batch (each rank's loss is its share of it, scaled by the world size)
        sync = self.trainer.world_size > 1
        # not prog_bar (Lightning reads those after every batch): callbacks.StepProgressBar
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=False,
                 sync_dist=sync)
        for name, value in metrics.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False, sync_dist=sync)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Check the gradients before clipping and the update (16-mixed leaves this to its
        gradient scaler, which skips overflowing steps itself)."""
        if self.train_hparams.precision == "16-mixed":
            return
        if fault_point("gradient") == "nan":  # the fault tests poison one gradient
            grad = next(p.grad for p in self.model.parameters() if p.grad is not None)
            grad.view(-1)[0] = float("inf")
        if self._guard_on_device:
            self._flag_step_on_device(optimizer)
            return
        bad = not _grads_finite(self.model)
        if self.trainer.world_size > 1:  # a sharded model's ranks each see a part
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            if self.train_hparams.nonfinite == "stop":
                raise NonFiniteError(self.global_step, "gradient")
            raise _SkipStep

    def _flag_step_on_device(self, optimizer: torch.optim.Optimizer) -> None:
        """Mark this step non-finite on the device, without waiting for it: the fused AdamW
        skips a step whose ``found_inf`` is 1 (weights, moments and step count untouched, as
        PyTorch's gradient scaler uses it); the flags are read at the next logging step."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        grads = [g.to_local() if hasattr(g, "to_local") else g for g in grads]
        device = grads[0].device if grads else self.device
        bad = ~torch.isfinite(torch.nn.utils.get_total_norm(grads, foreach=True)) if grads \
            else torch.zeros((), dtype=torch.bool, device=device)
        loss_bad = self._loss_bad if self._loss_bad is not None else torch.zeros_like(bad)
        flags = torch.stack([bad | loss_bad, loss_bad]).float()
        if self.trainer.world_size > 1:  # a sharded model's ranks each see a part
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        self._loss_bad = None
        raw = getattr(optimizer, "optimizer", optimizer)  # under a LightningOptimizer
        raw.found_inf = flags[0]
        if self._bad_steps is None:
            self._bad_steps = torch.full((), float(self.skipped_steps), device=flags.device)
            self._first_bad = torch.full((2,), -1.0, device=flags.device)
        self._bad_steps += flags[0]
        # made on the device (a tensor built from Python numbers would be copied there, and a
        # copy to the GPU waits for it)
        first = torch.stack([torch.full((), float(self.global_step), device=flags.device),
                             flags[1]])
        unset = (self._first_bad[0] < 0) & (flags[0] > 0)
        self._first_bad = torch.where(unset, first, self._first_bad)

    def _read_device_flags(self) -> None:
        """Read the device's non-finite flags (one sync, at logging steps and checkpoints):
        ``stop`` raises naming the first bad step, ``skip`` counts the steps skipped."""
        if self._bad_steps is None:
            return
        count = int(self._bad_steps.item())
        if count <= self.skipped_steps:
            return
        if self.train_hparams.nonfinite == "stop":
            step, loss_bad = (int(v) for v in self._first_bad.tolist())
            raise NonFiniteError(step, "loss" if loss_bad else "gradient")
        self.print(f"step {self.global_step}: {count - self.skipped_steps} step(s) with "
                   f"non-finite gradients skipped ({count} so far)")
        self.skipped_steps = count

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._guard_on_device and not self.trainer.fit_loop._should_accumulate() \
                and logging_step(self.global_step - 1, self.train_hparams.log_every,
                                 self.trainer.max_steps):
            self._read_device_flags()

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Any = None) -> None:
        try:
            optimizer.step(closure=optimizer_closure)
        except _SkipStep:
            optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.print(f"step {self.global_step}: non-finite gradients, step skipped "
                       f"({self.skipped_steps} so far)")
        if self.train_hparams.nonfinite == "skip" and logging_step(
                self.global_step, self.train_hparams.log_every, self.trainer.max_steps):
            skipped = self._bad_steps if self._guard_on_device and self._bad_steps is not None \
                else float(self.skipped_steps)
            self.log("train/skipped_steps", skipped, on_step=True, on_epoch=False)

    @property
    def flops_per_batch(self) -> int:
        """Training FLOPs of the last micro-batch, ``6 x trainable parameters x tokens`` (the
        usual estimate, attention left out); Lightning's ``ThroughputMonitor`` turns it into
        FLOP/s and, on GPUs it knows the peak of, MFU."""
        if not hasattr(self, "_flops_per_token"):
            trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            self._flops_per_token = 6 * trainable
            if self.lora is not None:  # the frozen base: forward and input gradients, 4 x N
                total = sum(_weights_in(p) for p in self.model.parameters())
                self._flops_per_token = 4 * total + 2 * trainable
        return self._flops_per_token * self._batch_tokens

    def configure_optimizers(self) -> dict[str, Any]:
        if self.lora is not None:
            # bf16-true has cast the whole module to bf16 by now; the adapters (few weights)
            # train in fp32, as peft makes them, so small updates are not rounded away
            for param in self.model.parameters():
                if param.requires_grad and param.dtype != torch.float32:
                    param.data = param.data.float()
        optimizer = build_optimizer(self.model, self.train_hparams)
        # a fused AdamW can skip a non-finite step on the device; 16-mixed leaves such steps to
        # its gradient scaler
        self._guard_on_device = bool(optimizer.defaults.get("fused")) \
            and self.train_hparams.precision != "16-mixed"
        scheduler = build_scheduler(optimizer, self.train_hparams)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # -- checkpoints: frozen helpers are rebuilt, not saved; objective state and token counts
    # are kept per rank
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._guard_on_device:  # a checkpoint records (and never follows) a bad step
            self._read_device_flags()
        prefix = FROZEN + "."
        for key in [k for k in checkpoint.get("state_dict", {}) if k.startswith(prefix)]:
            del checkpoint["state_dict"][key]
        if self.lora is not None:  # the frozen base is rebuilt too: only the adapters are saved
            trainable = {"model." + n for n, p in self.model.named_parameters() if p.requires_grad}
            for key in [k for k in checkpoint.get("state_dict", {})
                        if k.startswith("model.") and k not in trainable]:
                del checkpoint["state_dict"][key]
        checkpoint["moxin_tokens_seen"] = distributed.per_rank(self.tokens_seen)
        checkpoint["moxin_skipped_steps"] = self.skipped_steps
        checkpoint["moxin_objective"] = distributed.per_rank(self.objective.state_dict())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is not None and not self._sharded:
            # strict loading expects every key; the frozen models keep their current weights
            prefix = FROZEN + "."
            state.update({prefix + k: v for k, v in self.frozen.state_dict().items()})
            if self.lora is not None:
                # the frozen base is not in the checkpoint and keeps its (starting) weights: load
                # non-strictly (a 4-bit base's state has keys its own loading does not take),
                # after checking that every adapter weight is there
                missing = [n for n, p in self.model.named_parameters()
                           if p.requires_grad and "model." + n not in state]
                if missing:
                    raise MoxinError(f"The checkpoint has no weights for LoRA adapter(s) "
                                     f"{', '.join(missing[:3])}: it was not written by this "
                                     "stage's LoRA settings. Resume with the settings it was "
                                     "written with, or start the stage again.")
                self.strict_loading = False
        self.tokens_seen = distributed.this_rank(checkpoint.get("moxin_tokens_seen", 0))
        self.skipped_steps = int(checkpoint.get("moxin_skipped_steps", 0))
        self._bad_steps = None  # restarted from skipped_steps at the next step
        if "moxin_objective" in checkpoint:
            self.objective.load_state_dict(distributed.this_rank(checkpoint["moxin_objective"]))
