"""From a variant's stages to memory plans: the model's shape, what the objective adds, and the
largest micro-batch each strategy fits into a GPU on the way to the recipe's global batch."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from moxin_core.errors import MoxinError
from moxin_core.models.family import resolve_model
from moxin_core.planning.footprints import ObjectiveFootprint, objective_footprint
from moxin_core.planning.memory import (GIB, LORA_TARGETS, MemoryEstimate, ModelShape,
                                        StepSetup, Strategy, estimate_memory, precision)
from moxin_core.variants import PREVIOUS, VARIANT_PREFIX, Stage, Variant

#: GiB a GPU loses outside PyTorch's tensors: the CUDA context, cuBLAS and NCCL workspaces
CONTEXT_GIB = 1.0
#: share of a GPU left free for the caching allocator's fragmentation and for the temporaries
#: inside kernels that the formulas leave out
FRAGMENTATION = 0.10
DEFAULT_LORA_RANK = 16
#: what a stage's ``attention: auto`` runs on a CUDA GPU (moxin_core.module.choose_attention)
GPU_AUTO_ATTENTION = "flex_attention"
#: the largest GPU count the planner tries when it says how many GPUs FSDP would need
MAX_GPUS = 4096


def usable_bytes(gpu_mem_gib: float) -> int:
    """What the planner lets a step use of a GPU of ``gpu_mem_gib`` GiB (see the headroom
    constants above)."""
    return int((gpu_mem_gib * (1 - FRAGMENTATION) - CONTEXT_GIB) * GIB)


# -- the model a stage trains ------------------------------------------------------------------

def _start_of(registry: Any, variant: Variant, stage: Stage, model: str,
              seen: tuple[str, ...] = ()) -> str:
    """``model`` followed back through ``previous`` and ``variant:NAME`` to a preset name, a
    folder or a hub id (no trained run is needed: the model a stage starts from has the shape
    of the one its chain began with)."""
    if model == PREVIOUS:
        index = [s.name for s in variant.stages].index(stage.name)
        if index == 0:
            raise MoxinError(f"Stage {stage.name!r} starts from 'previous' but is the first "
                             f"stage of {variant.name!r}.")
        before = variant.stages[index - 1]
        return _start_of(registry, variant, before, before.model, seen)
    if model.startswith(VARIANT_PREFIX):
        name = model[len(VARIANT_PREFIX):]
        if name in seen:
            raise MoxinError(f"Variant {name!r} starts from itself ({' -> '.join(seen)}).")
        other = registry.get("variants", name)()
        final = other.stages[-1]
        return _start_of(registry, other, final, final.model, (*seen, name))
    return model


@dataclass
class StageModel:
    """The shape a stage trains, what the shape came from, and what the plan leaves out."""

    shape: ModelShape
    source: str
    notes: list[str] = field(default_factory=list)


def stage_model(registry: Any, variant: Variant, stage: Stage) -> StageModel:
    """The shape of the model ``stage`` trains. A preset built from other models (a VLM from a
    language model) is planned for the one part that is a decoder-only transformer, and the
    plan says so."""
    source = _start_of(registry, variant, stage, stage.model)
    ref = resolve_model(registry, source)
    config = ref.config()
    try:
        return StageModel(ModelShape.from_config(config, f"model {source!r}"), source)
    except MoxinError as error:
        parts = ref.family.references(config) if ref.is_preset else {}
        for role, model in parts.items():
            model = stage.references.get(role, model)
            part = _start_of(registry, variant, stage, model)
            part_ref = resolve_model(registry, part)
            try:
                shape = ModelShape.from_config(part_ref.config(), f"model {part!r}")
            except MoxinError:
                continue
            return StageModel(shape, part, [
                f"{source} is built from other models: planned for its {role} ({part}) alone; "
                "the other parts (a vision encoder, a projector) and their inputs are left "
                "out"])
        raise MoxinError(f"Stage {stage.name!r}: {error} Plan a stage whose model is one "
                         f"(--set {stage.name}.model=moxin-7b plans the Moxin-7B shape).") from None


# -- choosing a micro-batch ---------------------------------------------------------------------

@dataclass
class StrategyPlan:
    """One strategy's result: the largest micro-batch per GPU that fits and the accumulation
    that reaches the global batch, with the memory at that micro-batch (at 1 when none fits)."""

    strategy: Strategy
    fits: bool
    micro_batch: int | None
    grad_accum: int | None
    estimate: MemoryEstimate
    advice: str = ""
    configured: bool = False  # the strategy the stage's own settings choose

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy.kind, "label": self.strategy.label,
                "activation_checkpointing": self.strategy.activation_checkpointing,
                "lora_rank": self.strategy.lora_rank if self.strategy.kind == "lora" else None,
                "configured": self.configured, "fits": self.fits,
                "micro_batch": self.micro_batch, "grad_accum": self.grad_accum,
                "gib": self.estimate.gib(), "bytes": self.estimate.sizes(),
                "weights_detail_bytes": self.estimate.details,
                "peak_moment": self.estimate.moment,
                "advice": self.advice or None}


def _divisors(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def fit_micro_batch(shape: ModelShape, setup: StepSetup, strategy: Strategy, per_gpu: int,
                    usable: int, whole_batch_only: bool = False) -> StrategyPlan:
    """The largest micro-batch ``m`` dividing ``per_gpu`` (examples per GPU per optimizer step)
    whose peak fits in ``usable`` bytes, with accumulation ``per_gpu / m``;
    ``whole_batch_only``: the objective reuses each batch over several steps, which needs
    accumulation 1."""
    candidates = [per_gpu] if whole_batch_only else _divisors(per_gpu)
    for m in candidates:
        trial = replace(setup, micro_batch=m, grad_accum=per_gpu // m)
        estimate = estimate_memory(shape, trial, strategy)
        if estimate.peak <= usable:
            return StrategyPlan(strategy, True, m, per_gpu // m, estimate)
    smallest = replace(setup, micro_batch=candidates[-1], grad_accum=per_gpu // candidates[-1])
    estimate = estimate_memory(shape, smallest, strategy)
    return StrategyPlan(strategy, False, None, None, estimate,
                        _advice(shape, smallest, strategy, usable, estimate))


def fsdp_gpus_needed(shape: ModelShape, setup: StepSetup, checkpointing: bool,
                     usable: int) -> int | None:
    """The fewest GPUs over which FSDP fits ``setup`` (None: not even :data:`MAX_GPUS`)."""
    for gpus in range(1, MAX_GPUS + 1):
        if estimate_memory(shape, setup, Strategy("fsdp", gpus, checkpointing)).peak <= usable:
            return gpus
    return None


def _advice(shape: ModelShape, setup: StepSetup, strategy: Strategy, usable: int,
            estimate: MemoryEstimate) -> str:
    """What to change when even the smallest micro-batch does not fit."""
    options = []
    if strategy.kind != "lora":
        needed = fsdp_gpus_needed(shape, setup, strategy.activation_checkpointing, usable)
        if needed is not None and (strategy.kind == "ddp" or needed > strategy.gpus):
            options.append(f"FSDP over {needed}+ GPUs")
    if not strategy.activation_checkpointing:
        options.append("activation checkpointing")
    if strategy.kind != "lora":
        options.append("LoRA")
    if setup.logits_path == "cross-entropy" and not setup.logits_chunk \
            and strategy.kind != "fsdp" and estimate.logits > estimate.peak // 4:
        options.append("the objective option logits_chunk (e.g. 1024)")
    options += ["a shorter seq_len", "GPUs with more memory"]
    at = setup.micro_batch
    return (f"does not fit even at micro-batch {at}: {estimate.peak / GIB:.1f} GiB per GPU, "
            f"{usable / GIB:.1f} usable; use {' / '.join(options)}")


# -- a stage's plan ----------------------------------------------------------------------------

@dataclass
class StagePlan:
    """Every strategy's plan for one stage on ``gpus`` GPUs of ``gpu_mem_gib`` GiB."""

    variant: str
    stage: str
    objective: str
    model: StageModel
    precision: str
    seq_len: int
    global_batch: int
    recipe: dict[str, Any]
    gpus: int
    gpu_mem_gib: float
    usable: int
    attention: str
    footprint: ObjectiveFootprint
    #: the step planned (at micro-batch 1; each row has its own micro-batch)
    setup: StepSetup
    rows: list[StrategyPlan]
    #: the same without the objective's logits_chunk (only when the stage sets one)
    rows_without_chunk: list[StrategyPlan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        shape = self.model.shape
        return {
            "variant": self.variant, "stage": self.stage, "objective": self.objective,
            "model": self.model.source, "parameters": shape.parameters,
            "shape": dict(shape.__dict__), "precision": self.precision,
            "seq_len": self.seq_len, "attention": self.attention,
            "global_batch": self.global_batch, "recipe": self.recipe, "gpus": self.gpus,
            "gpu_mem_gib": self.gpu_mem_gib, "usable_gib": round(self.usable / GIB, 3),
            "footprint": dict(self.footprint.__dict__),
            "strategies": [row.to_dict() for row in self.rows],
            "strategies_without_logits_chunk": [row.to_dict() for row in self.rows_without_chunk],
            "notes": self.notes}


def recipe_devices(devices: Any) -> int:
    """How many devices the stage's ``devices`` setting counts in its global batch (``auto`` and
    -1 count one, as ``moxin variants`` shows)."""
    if isinstance(devices, int) and not isinstance(devices, bool):
        return max(devices, 1)
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str) and devices.strip() not in ("auto", "-1"):
        return len([d for d in devices.split(",") if d.strip()])
    return 1


def _configured(stage: Stage, lora_on: bool) -> tuple[str, bool]:
    from moxin_core.strategies import SHARDED

    kind = "lora" if lora_on else ("fsdp" if stage.hparams.strategy in SHARDED else "ddp")
    return kind, bool(stage.hparams.activation_checkpointing)


def plan_stage(registry: Any, variant: Variant, stage: Stage, gpus: int, gpu_mem_gib: float,
               lora_rank: int | None = None) -> StagePlan:
    """Plan ``stage`` of ``variant`` (overrides applied) on ``gpus`` GPUs of ``gpu_mem_gib``
    GiB each, for DDP, FSDP and LoRA, each with and without activation checkpointing."""
    from moxin_core.training.blocks import build_objective

    hp = stage.hparams
    model = stage_model(registry, variant, stage)
    objective = build_objective(registry, stage.objective, stage.objective_options)
    footprint = objective_footprint(objective)
    lora = dict(hp.lora or {})
    rank = lora_rank or lora.get("r") or DEFAULT_LORA_RANK
    attention = GPU_AUTO_ATTENTION if hp.attention == "auto" else hp.attention
    global_batch = hp.micro_batch_size * hp.grad_accum * recipe_devices(hp.devices) * hp.num_nodes
    per_gpu = max(1, -(-global_batch // gpus))
    notes = list(model.notes)
    if per_gpu * gpus != global_batch:
        notes.append(f"the global batch {global_batch} is not a multiple of {gpus} GPUs: planned "
                     f"for {per_gpu} examples per GPU (a global batch of {per_gpu * gpus})")
    setup = StepSetup(hp.precision, hp.seq_len, 1, 1, footprint.rows_per_example, attention,
                      footprint.logits_chunk, footprint.reference_models, footprint.logits_path)
    usable = usable_bytes(gpu_mem_gib)
    configured = _configured(stage, bool(lora.get("r")))
    whole = int(getattr(objective, "batch_repeats", 1)) > 1

    def plans(step: StepSetup) -> list[StrategyPlan]:
        rows = []
        for kind in ("ddp", "fsdp", "lora"):
            for checkpointing in (False, True):
                strategy = Strategy(kind, gpus, checkpointing, rank)
                row = fit_micro_batch(model.shape, step, strategy, per_gpu, usable, whole)
                row.configured = (kind, checkpointing) == configured
                rows.append(row)
        return rows

    plan = StagePlan(variant.name, stage.name, stage.objective, model, precision(hp.precision).name,
                     hp.seq_len, per_gpu * gpus,
                     {"micro_batch_size": hp.micro_batch_size, "grad_accum": hp.grad_accum,
                      "devices": hp.devices, "num_nodes": hp.num_nodes,
                      "global_batch": global_batch, "strategy": hp.strategy,
                      "activation_checkpointing": hp.activation_checkpointing},
                     gpus, gpu_mem_gib, usable, attention, footprint, setup, plans(setup),
                     notes=notes)
    if footprint.logits_chunk:
        plan.rows_without_chunk = plans(replace(setup, logits_chunk=0))
    notes.extend(_stage_notes(plan, setup, whole, lora, hp.attention))
    return plan


def _stage_notes(plan: StagePlan, setup: StepSetup, whole: bool, lora: dict[str, Any],
                 requested_attention: str) -> list[str]:
    """What the table alone does not say."""
    notes = []
    if plan.footprint.note:
        notes.append(plan.footprint.note)
    if requested_attention == "auto":
        notes.append(f"attention auto runs {GPU_AUTO_ATTENTION} on CUDA GPUs (k/v kept at the "
                     "grouped-query width, no dense mask)")
    if precision(setup.precision).autocast:
        shape = plan.model.shape
        copies = 2 * shape.linear_params / GIB
        notes.append(f"{setup.precision}: autocast keeps a 16-bit copy of every linear weight "
                     f"for the backward pass, {copies:.1f} GiB per GPU without activation "
                     "checkpointing; it is not sharded under FSDP")
    if setup.logits_chunk:
        notes.append(f"logits_chunk={setup.logits_chunk}: FSDP rows are planned without it "
                     "(the chunked loss does not take a sharded model); the table after the "
                     "first shows every strategy without it")
    if whole:
        notes.append("the objective reuses each batch for several steps, which needs "
                     "grad_accum 1: only the whole per-GPU batch is tried as micro-batch")
    targets = lora.get("targets", "all-linear")
    if targets != "all-linear" and set(targets) != set(LORA_TARGETS):
        notes.append(f"lora.targets={targets}: LoRA rows are planned with adapters on every "
                     "projection, an upper bound for fewer targets")
    if lora.get("quantize"):
        notes.append(f"lora.quantize={lora['quantize']}: LoRA rows are planned with the base in "
                     f"{setup.precision} weights; a 4-bit base needs about 0.56 bytes per linear "
                     "weight instead")
    return notes


def plan_variant(registry: Any, variant: Variant, gpus: int, gpu_mem_gib: float,
                 stage: str | None = None, lora_rank: int | None = None) -> list[StagePlan]:
    """:func:`plan_stage` for one stage of ``variant`` (``stage``) or for each of them."""
    check_plan_inputs(gpus, gpu_mem_gib, lora_rank)
    stages = [variant.stage(stage)] if stage else variant.stages
    return [plan_stage(registry, variant, s, gpus, gpu_mem_gib, lora_rank) for s in stages]


def check_plan_inputs(gpus: Any, gpu_mem_gib: Any, lora_rank: Any = None) -> None:
    """MoxinError naming the option when a GPU count, memory or LoRA rank makes no sense."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus <= 0:
        raise MoxinError(f"--gpus must be a positive number of GPUs, got {gpus!r}; e.g. "
                         "--gpus 8.")
    if isinstance(gpu_mem_gib, bool) or not isinstance(gpu_mem_gib, (int, float)) \
            or not gpu_mem_gib > 0:
        raise MoxinError(f"--gpu-mem must be a positive number of GiB per GPU, got "
                         f"{gpu_mem_gib!r}; e.g. --gpu-mem 80 for an 80 GB H100.")
    if usable_bytes(gpu_mem_gib) <= 0:
        raise MoxinError(f"--gpu-mem {gpu_mem_gib} GiB leaves nothing to train with once "
                         f"{CONTEXT_GIB:g} GiB (CUDA context) and {FRAGMENTATION:.0%} "
                         "(fragmentation) are set aside; give the GPU's memory in GiB.")
    if lora_rank is not None and (isinstance(lora_rank, bool) or not isinstance(lora_rank, int)
                                  or lora_rank <= 0):
        raise MoxinError(f"--lora-r must be a positive adapter rank, got {lora_rank!r}; e.g. "
                         "--lora-r 16.")
