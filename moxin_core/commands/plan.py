"""``moxin plan VARIANT --gpus N --gpu-mem GB``: per-GPU memory of training each stage, and the
micro-batch x accumulation that fits, for DDP, FSDP and LoRA (docs/memory.md)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from moxin_core.commands.base import Command

GIB, MIB = 2 ** 30, 2 ** 20
_PARTS = ("weights", "gradients", "optimizer", "activations", "logits", "peak")
_HEADERS = ("weights", "grads", "optim", "activ.", "logits", "peak")


def _describe_stage(plan: Any) -> list[str]:
    """The lines above a stage's table: what is trained, how, and on what."""
    from moxin_core.planning import CONTEXT_GIB, FRAGMENTATION

    s = plan.model.shape
    recipe = plan.recipe
    size = (f"{s.parameters / 1e9:.2f} B" if s.parameters >= 1e9
            else f"{s.parameters / 1e6:.1f} M")
    return [
        f"{plan.variant} / {plan.stage}: {plan.objective} on {plan.model.source} "
        f"({size} parameters: {s.layers} layers, hidden {s.hidden}, "
        f"{s.heads}/{s.kv_heads} heads, MLP {s.intermediate}, vocab {s.vocab})",
        f"  {plan.precision}, seq_len {plan.seq_len}, attention {plan.attention}, "
        f"{plan.footprint.rows_per_example} sequence(s) per example; global batch "
        f"{plan.global_batch} (recipe: micro-batch {recipe['micro_batch_size']} x accumulation "
        f"{recipe['grad_accum']} x devices {recipe['devices']} x nodes {recipe['num_nodes']})",
        f"  {plan.gpus} GPU(s) x {plan.gpu_mem_gib:g} GiB: {plan.usable / GIB:.1f} GiB usable "
        f"per GPU ({CONTEXT_GIB:g} GiB CUDA context, {FRAGMENTATION:.0%} fragmentation)",
    ]


def _table(rows: list[Any], gpus: int, unit: str) -> list[str]:
    """One line per strategy: memory per component at the peak (``unit``: GiB or MiB),
    whether it fits, the micro-batch and accumulation."""
    size = GIB if unit == "GiB" else MIB
    lines = [f"  {unit + ' per GPU':<28}" + "".join(f"{h:>9}" for h in _HEADERS)
             + "  fits  micro-batch x accumulation"]
    for row in rows:
        sizes = row.estimate.sizes(size)
        marker = ("*" if row.configured else "") + ("^" if row.estimate.moment != "start of "
                                                     "backward" else "")
        values = "".join(f"{sizes[p]:>9.2f}" for p in _PARTS)
        batch = (f"{row.micro_batch} x {row.grad_accum} (x {gpus} GPU{'s' if gpus > 1 else ''})"
                 if row.fits else "-")
        lines.append(f"  {row.strategy.label + ' ' + marker:<28}{values}  "
                     f"{'yes' if row.fits else 'no':<4}  {batch}")
    return lines


def print_plans(plans: list[Any]) -> None:
    """Each stage's plan as text: what is trained, the table per strategy, advice, notes."""
    for index, plan in enumerate(plans):
        if index:
            print()
        for line in _describe_stage(plan):
            print(line)
        print()
        rows = [*plan.rows, *plan.rows_without_chunk]
        unit = "GiB" if max(row.estimate.peak for row in rows) >= GIB else "MiB"
        for line in _table(plan.rows, plan.gpus, unit):
            print(line)
        if plan.rows_without_chunk:
            print(f"  without logits_chunk (the objective's option set to "
                  f"{plan.footprint.logits_chunk} above):")
            for line in _table(plan.rows_without_chunk, plan.gpus, unit)[1:]:
                print(line)
        print("  * the stage's own settings; ^ peak at the end of the backward pass (every "
              "gradient, no logits); sizes at the micro-batch shown (at 1 when none fits)")
        for row in rows:
            if row.advice:
                print(f"  - {row.strategy.label}: {row.advice}")
        for note in plan.notes:
            print(f"  note: {note}")


class PlanCommand(Command):
    help = "plan the per-GPU memory of a variant's stages and the micro-batch that fits"

    def configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("variant", help="variant name (`moxin variants`) or .yaml file")
        parser.add_argument("--stage", default=None, help="plan only this stage")
        parser.add_argument("--gpus", type=int, required=True, metavar="N",
                            help="GPUs the stage trains on")
        parser.add_argument("--gpu-mem", type=float, required=True, metavar="GIB",
                            help="memory of one GPU in GiB (e.g. 80 for an 80 GB H100)")
        parser.add_argument("--lora-r", type=int, default=None, metavar="R",
                            help="LoRA rank of the LoRA rows (default: the stage's lora.r, "
                                 "else 16)")
        parser.add_argument("--config", default=None, help="YAML file of settings, as for train")
        parser.add_argument("--set", dest="sets", action="append", default=[],
                            metavar="KEY=VALUE", help="override a setting, as for train "
                            "(e.g. --set seq_len=4096)")
        parser.add_argument("--json", action="store_true", help="print JSON")

    def run(self, args: argparse.Namespace, registry: Any) -> int:
        from moxin_core.planning import check_plan_inputs, plan_variant
        from moxin_core.training.resolve import resolve_variant

        check_plan_inputs(args.gpus, args.gpu_mem, args.lora_r)
        variant = resolve_variant(registry, args.variant, args.config, args.sets)
        if args.stage:
            variant.stage(args.stage)  # an unknown stage: an error listing the stages
        plans = plan_variant(registry, variant, args.gpus, args.gpu_mem, args.stage, args.lora_r)
        if args.json:
            print(json.dumps([plan.to_dict() for plan in plans], indent=2, default=str))
        else:
            print_plans(plans)
        return 0
