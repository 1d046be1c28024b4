"""``moxin plan``: per-GPU memory of training a stage, and the micro-batch that fits.

:mod:`moxin_core.planning.memory` holds the formulas (weights, gradients, optimizer state,
activations, logits for DDP, FSDP and LoRA, with or without activation checkpointing);
:mod:`moxin_core.planning.footprints` says what an objective adds to a step;
:mod:`moxin_core.planning.stages` applies them to a variant's stages. ``docs/memory.md`` derives
every term and shows the measured peaks they are checked against.
"""

from moxin_core.planning.memory import (GIB, LORA_TARGETS, MemoryEstimate, ModelShape,
                                        Precision, StepSetup, Strategy, activation_bytes,
                                        estimate_memory, layer_activation_bytes, logits_bytes,
                                        precision)
from moxin_core.planning.footprints import ObjectiveFootprint, objective_footprint
from moxin_core.planning.stages import (CONTEXT_GIB, DEFAULT_LORA_RANK, FRAGMENTATION,
                                        StageModel, StagePlan, StrategyPlan, check_plan_inputs,
                                        fit_micro_batch, fsdp_gpus_needed, plan_stage,
                                        plan_variant, stage_model, usable_bytes)

__all__ = ["CONTEXT_GIB", "DEFAULT_LORA_RANK", "FRAGMENTATION", "GIB", "LORA_TARGETS",
           "MemoryEstimate", "ModelShape", "ObjectiveFootprint", "Precision", "StageModel",
           "StagePlan", "StepSetup", "Strategy", "StrategyPlan", "activation_bytes",
           "check_plan_inputs", "estimate_memory", "fit_micro_batch", "fsdp_gpus_needed",
           "layer_activation_bytes", "logits_bytes", "objective_footprint", "plan_stage",
           "plan_variant", "precision", "stage_model", "usable_bytes"]
